import pyarrow as pa
import pytest

from recsys_lib.storage import LocalStore, S3Store, Storage, StorageError


def test_bytes_roundtrip_list_and_delete(object_store):
    object_store.write_bytes("a/b/one.json", b"1")
    object_store.write_bytes("a/b/two.json", b"2")
    object_store.write_bytes("a/c/three.json", b"3")
    object_store.write_bytes("ab.json", b"4")
    assert object_store.read_bytes("a/b/two.json") == b"2"
    assert object_store.exists("a/b/one.json") and not object_store.exists("a/b/zero.json")
    assert object_store.list("a/") == ["a/b/one.json", "a/b/two.json", "a/c/three.json"]
    assert object_store.list("a") == ["a/b/one.json", "a/b/two.json", "a/c/three.json", "ab.json"]
    assert object_store.list_dirs("a") == ["b", "c"]
    object_store.write_bytes("a/b/one.json", b"replaced")
    assert object_store.read_bytes("a/b/one.json") == b"replaced"
    assert object_store.delete_prefix("a/b/") == 2
    assert object_store.list("a/") == ["a/c/three.json"]
    with pytest.raises(StorageError, match="not found: .*a/b/one.json"):
        object_store.read_bytes("a/b/one.json")


def test_tables_roundtrip_and_replace(object_store):
    first = pa.table({"x": [1, 2, 3]})
    object_store.write_table("t", first, part=0)
    object_store.write_table("t", pa.table({"x": [4]}), part=1)
    assert sorted(object_store.read_table("t").column("x").to_pylist()) == [1, 2, 3, 4]
    object_store.replace_table("t", pa.table({"x": [9]}))
    assert object_store.read_table("t").column("x").to_pylist() == [9]
    assert object_store.table_exists("t") and not object_store.table_exists("u")
    with pytest.raises(StorageError, match="no Parquet table"):
        object_store.read_table("u")


def test_replace_table_parts_writes_a_stream_and_drops_stale_parts(object_store):
    object_store.replace_table_parts("t", (pa.table({"x": [n]}) for n in range(3)))
    assert sorted(object_store.read_table("t").column("x").to_pylist()) == [0, 1, 2]
    written = object_store.replace_table_parts("t", iter([pa.table({"x": [7]})]))  # a smaller rerun
    assert object_store.parquet_parts("t") == written
    assert object_store.read_table("t").column("x").to_pylist() == [7]


def test_upload_download(object_store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    object_store.upload(src, "files/blob.bin")
    object_store.download("files/blob.bin", tmp_path / "out" / "blob.bin")
    assert (tmp_path / "out" / "blob.bin").read_bytes() == b"x" * 1000


def test_spark_paths():
    assert S3Store("s3://bucket/pre").spark_path("lake/items") == "s3a://bucket/pre/lake/items"
    assert LocalStore("/data").spark_path("lake/items") == "/data/lake/items"


def test_dataset_keys_are_partitioned_by_ds():
    assert Storage.raw("items", "2026-01-02") == "raw/items/ds=2026-01-02"
    assert Storage.lake_partition("interactions", "2026-01-02") == "lake/interactions/ds=2026-01-02"
    assert Storage.features("item_documents", "2026-01-02") == "features/ds=2026-01-02/item_documents"
    assert Storage.item_embeddings("2026-01-02", "3") == "embeddings/ds=2026-01-02/model_version=3"
    assert Storage.index("2026-01-02", "3", "items.faiss") == "index/ds=2026-01-02/model_version=3/items.faiss"


def test_partitions_lists_ds_folders(settings):
    storage = Storage(settings)
    for ds in ("2026-01-03", "2026-01-01"):
        storage.work.write_bytes(f"lake/items/ds={ds}/part-0.parquet", b"")
    storage.work.write_bytes("lake/items/_SUCCESS/x", b"")
    assert storage.partitions("lake/items") == ["2026-01-01", "2026-01-03"]

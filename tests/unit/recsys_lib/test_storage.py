"""Object stores (local directory and a real S3 server) and the pipeline's dataset catalogue."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recsys_lib.embedding import EncoderOutputs, embeddings_table
from recsys_lib.errors import MissingInput, StorageError
from recsys_lib.storage import FeatureTable, LocalStore, OutputTable, S3Store, Storage
from tests.conftest import evaluation_report


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


def test_a_staged_prefix_replaces_the_whole_target(object_store):
    object_store.write_bytes("lake/x/ds=1/old-part", b"old")
    object_store.write_bytes("staging/x/ds=1/part-0", b"new0")
    object_store.write_bytes("staging/x/ds=1/sub/part-1", b"new1")
    object_store.replace_prefix("staging/x/ds=1", "lake/x/ds=1")
    assert object_store.list("lake/") == ["lake/x/ds=1/part-0", "lake/x/ds=1/sub/part-1"]
    assert object_store.read_bytes("lake/x/ds=1/sub/part-1") == b"new1" and not object_store.list("staging/")
    object_store.write_bytes("staging/y/ds=1/part-0", b"first")
    object_store.replace_prefix("staging/y/ds=1/", "lake/y/ds=1/")  # a target that did not exist
    assert object_store.list("lake/y/") == ["lake/y/ds=1/part-0"]


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


def test_output_tables_written_together_in_parts_drop_stale_parts(settings):
    storage = Storage(settings)
    parts = ({OutputTable.USER_TOPN: pa.table({"x": [n]}), OutputTable.USER_VECTORS: pa.table({"v": [n]})}
             for n in range(3))  # fmt: skip
    assert storage.write_output_parts("2026-01-01", parts) == 3
    assert sorted(storage.read_output_table(OutputTable.USER_TOPN, "2026-01-01").column("x").to_pylist()) == [0, 1, 2]
    smaller = iter([{OutputTable.USER_TOPN: pa.table({"x": [7]}), OutputTable.USER_VECTORS: pa.table({"v": [7]})}])
    assert storage.write_output_parts("2026-01-01", smaller) == 1  # a smaller rerun leaves no stale part
    assert storage.read_output_table(OutputTable.USER_VECTORS, "2026-01-01").column("v").to_pylist() == [7]


def test_upload_download(object_store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    object_store.upload(src, "files/blob.bin")
    object_store.download("files/blob.bin", tmp_path / "out" / "blob.bin")
    assert (tmp_path / "out" / "blob.bin").read_bytes() == b"x" * 1000


def test_a_local_store_on_a_file_says_so_before_anything_is_written(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StorageError, match="a-file: a file, not a directory"):
        LocalStore(tmp_path / "a-file")
    assert LocalStore(tmp_path / "not-yet").list("") == []  # a directory still to be made is fine


def test_spark_paths():
    assert S3Store("s3://bucket/pre").spark_path("lake/items") == "s3a://bucket/pre/lake/items"
    assert LocalStore("/data").spark_path("lake/items") == "/data/lake/items"


def test_dataset_keys_are_partitioned_by_ds():
    assert Storage.raw("items", "2026-01-02") == "raw/items/ds=2026-01-02"
    assert Storage.lake_partition("interactions", "2026-01-02") == "lake/interactions/ds=2026-01-02"
    assert Storage.features(FeatureTable.ITEM_DOCUMENTS, "2026-01-02") == "features/ds=2026-01-02/item_documents"
    with pytest.raises(ValueError):
        Storage.features("item_docs", "2026-01-02")  # a misspelt dataset is an error, not a new folder
    assert Storage.item_embeddings("2026-01-02", "3") == "embeddings/ds=2026-01-02/model_version=3"
    assert Storage.index("2026-01-02", "3", "items.faiss") == "index/ds=2026-01-02/model_version=3/items.faiss"


def test_partitions_lists_ds_folders(settings):
    storage = Storage(settings)
    for ds in ("2026-01-03", "2026-01-01"):
        storage.work.write_bytes(f"lake/items/ds={ds}/part-0.parquet", b"")
    storage.work.write_bytes("lake/items/_SUCCESS/x", b"")
    assert storage.partitions("lake/items") == ["2026-01-01", "2026-01-03"]


def test_missing_inputs_name_the_stage_to_run(settings):
    storage = Storage(settings)
    reads = [
        (lambda: storage.read_features(FeatureTable.USER_HISTORIES, "2026-01-01"), "run the features stage first"),
        (lambda: storage.read_item_embeddings("2026-01-01", "3"), "run the embed_items stage first"),
        (lambda: storage.read_index("2026-01-01", "3"), "run the build_index stage first"),
        (lambda: storage.read_output_table(OutputTable.USER_TOPN, "2026-01-01"), "run the recommend stage first"),
        (lambda: storage.read_evaluation("2026-01-01"), "run the evaluate stage first"),
    ]
    for read, message in reads:
        with pytest.raises(MissingInput, match=message):
            read()


def test_item_embeddings_and_encoder_outputs(settings):
    storage = Storage(settings)
    table = embeddings_table(["a"], np.full((1, 2), 3.0, np.float32), np.zeros(1), ["h"], "7")
    storage.write_item_embeddings("2026-01-03", "7", table)
    assert storage.read_item_embeddings("2026-01-03", "7").equals(table)
    assert storage.read_encoder_outputs("f00d") is None
    for hashes in (["h1", "h2"], ["h2", "h3"]):  # a second night adds a part; h2 is there twice
        outputs = EncoderOutputs(pd.Index(hashes, dtype=object), np.ones((2, 4), np.float32))
        storage.add_encoder_outputs("f00d", outputs.to_table())
    assert sorted(storage.read_encoder_outputs("f00d").hashes) == ["h1", "h2", "h3"]
    # Only the rows asked for: the cache may hold far more than a reader needs.
    assert list(storage.read_encoder_outputs("f00d", hashes=["h3", "h9"]).hashes) == ["h3"]
    assert storage.read_encoder_outputs("f00d", hashes=[]) is None
    assert storage.read_encoder_outputs("f00d", hashes=["h9"]) is None  # none of them there


def test_two_stages_adding_to_one_cache_at_once_lose_nothing(settings):
    """Recommend and evaluate run side by side and may add to the same cache: each part is
    named for itself, so neither write replaces the other's (numbered parts did, when both
    listed the same parts before writing)."""
    from concurrent.futures import ThreadPoolExecutor

    def add(name: str) -> None:
        storage = Storage(settings)
        for n in range(25):
            outputs = EncoderOutputs(pd.Index([f"{name}{n}"], dtype=object), np.ones((1, 2), np.float32))
            storage.add_encoder_outputs("beef", outputs.to_table())

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(add, ["recommend", "evaluate"]))
    assert len(Storage(settings).read_encoder_outputs("beef")) == 50


def test_index_and_evaluation_roundtrip(settings):
    from recsys_lib.index import build_index, search
    from recsys_lib.settings import IndexSettings

    storage = Storage(settings)
    vectors = np.eye(3, dtype=np.float32)
    index = build_index(vectors, IndexSettings("flat", 10, 2, 32, 128, 8))
    storage.write_index("2026-01-01", "7", index, ["a", "b", "c"], {"kind": "flat"})
    again = storage.read_index("2026-01-01", "7")
    assert search(again, vectors[[2]], 1)[1].tolist() == [[2]]
    assert storage.read_index_manifest("2026-01-01", "7") == {"kind": "flat"}
    report = evaluation_report({"ndcg_at_10": 0.25, "recall_at_10": 0.5})
    storage.write_evaluation(report)
    assert storage.read_evaluation(report.ds) == report
    assert "ndcg_at_10" in storage.evaluation_table(report.ds) and storage.evaluation_table("2030-01-01") is None


def test_a_trial_raw_drop_is_kept_only_when_its_block_succeeds(settings, object_store, tmp_path):
    """And so is what the stages derived from it: a run refused after ingest (in train, say, or
    interrupted) leaves the lake and the features of ds as it found them."""
    storage = Storage(settings)
    storage.work = object_store
    storage.replace_raw_drop("items", "2026-01-01", {"old.csv": b"earlier"})
    lake, features = "lake/items/ds=2026-01-01/part-00000.parquet", "features/ds=2026-01-01/split.json"
    object_store.write_bytes(lake, b"earlier rows")
    object_store.write_bytes(features, b"earlier split")
    new = tmp_path / "new.csv"
    new.write_bytes(b"rejected")
    with pytest.raises(RuntimeError, match="the run failed"):
        with storage.trial_raw_drops("2026-01-01", {"items": {"new.csv": new}, "users": {"u.csv": new}}) as uris:
            assert uris["items"] == [object_store.uri("raw/items/ds=2026-01-01/new.csv")]
            assert storage.raw_files("users", "2026-01-01") == ["raw/users/ds=2026-01-01/u.csv"]
            object_store.write_bytes(lake, b"rejected rows")  # ingest ran
            object_store.write_bytes("lake/users/ds=2026-01-01/part-00000.parquet", b"rejected users")
            object_store.write_bytes(features, b"rejected split")  # so did features
            raise RuntimeError("the run failed")  # then train refused
    assert storage.raw_files("items", "2026-01-01") == ["raw/items/ds=2026-01-01/old.csv"]
    assert object_store.read_bytes("raw/items/ds=2026-01-01/old.csv") == b"earlier"
    assert storage.raw_files("users", "2026-01-01") == []  # it had no drop before
    assert object_store.list("raw/") == ["raw/items/ds=2026-01-01/old.csv"]  # nothing set aside is left
    assert object_store.list("lake/") == [lake] and object_store.read_bytes(lake) == b"earlier rows"
    assert object_store.read_bytes(features) == b"earlier split" and object_store.list("staging/") == []

    with storage.trial_raw_drops("2026-01-01", {"items": {"new.csv": new}}):
        object_store.write_bytes(lake, b"new rows")
    assert object_store.list("raw/") == ["raw/items/ds=2026-01-01/new.csv"]
    assert object_store.read_bytes(lake) == b"new rows" and object_store.list("staging/") == []


def test_the_split_that_ran_is_read_back_and_an_unrecorded_auto_one_is_unknown(settings):
    storage = Storage(settings)
    assert settings.features.split == "auto" and storage.read_split("2026-01-01") == ""
    assert Storage(settings.with_overrides({"features.split": "global_time"})).read_split("2026-01-01") == "global_time"
    storage.write_split("2026-01-01", "user_chrono")
    assert storage.read_split("2026-01-01") == "user_chrono"


def test_raw_drops_are_replaced_whole_and_text_settings_files_read(settings, tmp_path):
    storage = Storage(settings)
    storage.replace_raw_drop("items", "2026-01-01", {"a.csv": b"x", "b.csv": b"y"})
    source = tmp_path / "items.parquet"
    source.write_bytes(b"z")
    uris = storage.replace_raw_drop("items", "2026-01-01", {"items.parquet": source})
    assert storage.raw_files("items", "2026-01-01") == ["raw/items/ds=2026-01-01/items.parquet"]
    assert uris == [storage.work.uri("raw/items/ds=2026-01-01/items.parquet")]
    assert storage.read_text(str(source)) == "z"


def test_old_derived_data_and_idle_encoder_caches_are_pruned_and_the_data_kept(settings, object_store):
    """What a rerun derives again goes after keep_days; the data, the quarantine and each run's
    record stay whatever their age."""
    storage = Storage(settings)
    storage.work = object_store
    day = 86_400 * 10**9
    now = 1_800_000_000 * 10**9
    kept = []
    for ds in ("2026-01-01", "2026-01-20"):
        for key in (f"features/ds={ds}/items/part-00000.parquet", f"embeddings/ds={ds}/model_version=3/p.parquet",
                    f"index/ds={ds}/model_version=3/index.faiss", f"runs/ds={ds}/user_topn/part-00000.parquet",
                    f"runs/ds={ds}/query_encoder/model.onnx", f"exports/user_topn/{ds}_abc.jsonl"):  # fmt: skip
            object_store.write_bytes(key, b"x")
        for key in (f"raw/items/ds={ds}/a.csv", f"lake/items/ds={ds}/part-00000.parquet",
                    f"quarantine/items/ds={ds}/part-00000.parquet", f"runs/ds={ds}/evaluation.json",
                    f"runs/ds={ds}/report.html", f"runs/ds={ds}/stages/train.json"):  # fmt: skip
            object_store.write_bytes(key, b"x")
            kept.append(key)
    idle, busy = "encoder_outputs/encoder=old", "encoder_outputs/encoder=new-texts"
    object_store.write_bytes(f"{idle}/part-{now - 20 * day:020d}-0a1b2c3d.parquet", b"x")
    object_store.write_bytes(f"{busy}/part-{now - 20 * day:020d}-0a1b2c3d.parquet", b"x")
    object_store.write_bytes(f"{busy}/part-{now - 2 * day:020d}-4e5f6a7b.parquet", b"x")
    object_store.write_bytes("encoder_outputs/encoder=legacy/part-00000.parquet", b"x")  # no write time: kept

    pruned = storage.prune_work("2026-01-20", keep_days=14, now_ns=now)
    assert sorted(pruned) == [
        "embeddings/ds=2026-01-01", idle, "exports/user_topn/2026-01-01_abc.jsonl", "features/ds=2026-01-01",
        "index/ds=2026-01-01", "runs/ds=2026-01-01/query_encoder", "runs/ds=2026-01-01/user_topn",
    ]
    left = object_store.list("")
    assert all(key in left for key in kept)
    assert not any("2026-01-01" in key for key in left if key not in kept)
    assert sum("2026-01-20" in key for key in left) == 12  # the night's own, all of it
    assert sorted(k for k in left if k.startswith("encoder_outputs/")) == [
        "encoder_outputs/encoder=legacy/part-00000.parquet",
        f"{busy}/part-{now - 20 * day:020d}-0a1b2c3d.parquet", f"{busy}/part-{now - 2 * day:020d}-4e5f6a7b.parquet",
    ]
    assert storage.prune_work("2026-01-20", keep_days=14, now_ns=now) == []  # nothing more to do

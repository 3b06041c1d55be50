"""The lake through Spark: raw drops in every supported format, partitions up to or before a day."""

import pytest

from recsys_lib import lake
from recsys_lib.data import to_bytes
from recsys_lib.errors import MissingInput, SchemaError
from recsys_lib.storage import Storage

pytestmark = pytest.mark.spark


def test_raw_format_by_suffix():
    assert [lake.raw_format(k) for k in ("a.CSV", "b.jsonl.gz", "c.parquet", "_SUCCESS", "d.txt")] == [
        "csv", "json", "parquet", None, None,
    ]  # fmt: skip


def test_a_drop_of_several_formats_is_one_frame_of_strings(spark, settings):
    import pandas as pd

    storage = Storage(settings)
    first = pd.DataFrame({"user_id": [1], "item_id": ["a"], "timestamp": [10], "extra": ["dropped"]})
    second = pd.DataFrame({"user_id": ["u2"], "item_id": ["b"], "timestamp": ["2026-01-01T00:00:00"]})
    storage.replace_raw_drop(
        "interactions", "2026-01-01",
        {"one.parquet": to_bytes(first, "parquet"), "two.jsonl": to_bytes(second, "jsonl"), "notes.txt": b"x"},
    )  # fmt: skip
    rows = lake.read_raw_drop(spark, storage, "interactions", "2026-01-01").orderBy("user_id").collect()
    assert [(r.user_id, r.item_id, r.timestamp) for r in rows] == [("1", "a", "10"), ("u2", "b", "2026-01-01T00:00:00")]
    assert rows[0].source_file.endswith("one.parquet") and "extra" not in rows[0].asDict()
    assert lake.read_raw_drop(spark, storage, "users", "2026-01-01") is None  # no drop at all


def test_a_csv_separated_by_semicolons_or_tabs_is_read_as_such(spark, settings):
    storage = Storage(settings)
    storage.replace_raw_drop("items", "2026-01-01", {
        "semicolons.csv": b'item_id;title;categories\n1;"Up, the film";Animation|Drama\n',
        "tabs.csv": b"item_id\ttitle\n2\tAmelie\n",
        "commas.csv": b"item_id,title\n3,Heat\n",
    })  # fmt: skip
    rows = lake.read_raw_drop(spark, storage, "items", "2026-01-01").orderBy("item_id").collect()
    assert [(r.item_id, r.title, r.categories) for r in rows] == [
        ("1", "Up, the film", "Animation|Drama"), ("2", "Amelie", None), ("3", "Heat", None),
    ]  # fmt: skip


def test_text_drops_must_be_valid_in_their_encoding(spark, settings):
    import gzip

    storage = Storage(settings)
    latin1 = "item_id,title\n1,Amélie\n".encode("latin-1")
    storage.replace_raw_drop("items", "2026-01-01", {"items.csv": latin1})
    with pytest.raises(SchemaError, match=r"items.csv: not valid utf-8 at byte 18 \(invalid continuation byte\); "
                                          r"convert the file or set ingest.encoding"):  # fmt: skip
        lake.read_raw_drop(spark, storage, "items", "2026-01-01")
    storage.replace_raw_drop("items", "2026-01-01", {"items.csv.gz": gzip.compress(latin1)})
    with pytest.raises(SchemaError, match="items.csv.gz: not valid utf-8 at byte 18"):
        lake.read_raw_drop(spark, storage, "items", "2026-01-01")
    rows = lake.read_raw_drop(spark, storage, "items", "2026-01-01", encoding="latin-1").collect()
    assert [r.title for r in rows] == ["Amélie"]


def test_a_malformed_json_line_is_quarantined_with_its_text(spark, settings):
    from recsys_lib.validate import validate_interactions

    storage = Storage(settings)
    lines = b'{"user_id": "u1", "item_id": "a", "timestamp": 1767225600}\n{"user_id": "u2", "item_id": \n'
    storage.replace_raw_drop("interactions", "2026-01-01", {"events.jsonl": lines})
    raw = lake.read_raw_drop(spark, storage, "interactions", "2026-01-01").cache()
    valid, rejected = validate_interactions(raw, "2026-01-01")
    assert [r.user_id for r in valid.collect()] == ["u1"]
    (bad,) = rejected.collect()
    assert bad.reason == "row: not valid JSON (its text is kept in raw_record)"
    assert bad.raw_record == '{"user_id": "u2", "item_id": '


def test_lake_partitions_up_to_or_before_a_day(spark, settings):
    storage = Storage(settings)
    with pytest.raises(MissingInput, match="no items in the lake up to 2026-01-02 .*: run the ingest stage first"):
        lake.read_lake(spark, storage, "items", "2026-01-02")
    for ds in ("2026-01-01", "2026-01-02", "2026-01-03"):
        frame = spark.createDataFrame([(f"i{ds[-1]}",)], "item_id string")
        lake.write_table(frame, storage, Storage.lake_partition("items", ds))
    up_to = lake.read_lake(spark, storage, "items", "2026-01-02").orderBy("item_id").collect()
    assert [(r.item_id, r.ds) for r in up_to] == [("i1", "2026-01-01"), ("i2", "2026-01-02")]
    before = lake.read_lake(spark, storage, "items", "2026-01-02", before=True).collect()
    assert [r.item_id for r in before] == ["i1"]
    assert lake.read_registered_users(spark, storage, "2026-01-02").count() == 0  # users are optional


def test_users_from_before_interests_joined_the_contract_read_with_none(spark, settings):
    storage = Storage(settings)
    old = spark.createDataFrame([("u1", "kids", None)], "user_id string, segment string, updated_at timestamp")
    lake.write_table(old, storage, Storage.lake_partition("users", "2026-01-01"))
    users = [tuple(r) for r in lake.read_registered_users(spark, storage, "2026-01-01").collect()]
    assert users == [("u1", "kids", None)]
    new = spark.createDataFrame([("u2", None, "jazz", None)],
                                "user_id string, segment string, interests string, updated_at timestamp")  # fmt: skip
    lake.write_table(new, storage, Storage.lake_partition("users", "2026-01-02"))
    users = sorted(tuple(r) for r in lake.read_registered_users(spark, storage, "2026-01-02").collect())
    assert users == [("u1", "kids", None), ("u2", None, "jazz")]

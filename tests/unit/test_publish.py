import json

import pandas as pd
import pytest

from recsys_lib import publish as pub
from recsys_lib.reader import NothingPublished, PublishedTables
from recsys_lib.recommend import item_similar_table, user_topn_table

HISTORIES = pd.DataFrame({"user_id": ["u1", "u2"], "seen": [["a"], ["b", "c"]]})
CATALOGUE = {"a", "b", "c", "d"}


def topn(rows):
    users, ranks, items, scores = zip(*rows)
    return user_topn_table(list(users), list(ranks), list(items), list(scores), "m/1", "2026-01-01")


GOOD = [("u1", 1, "b", 0.9), ("u1", 2, "c", 0.8), ("u2", 1, "a", 0.7), ("u2", 2, "d", 0.1)]


def test_a_good_table_passes():
    table = topn(GOOD)
    assert pub.check_user_topn(table.to_pandas(), HISTORIES, CATALOGUE, table.schema) == []


@pytest.mark.parametrize(
    "rows, failure",
    [
        ([("u1", 1, "a", 0.9)] + GOOD[1:], "already seen, e.g. user u1 item a"),
        (GOOD[:1] + [("u1", 2, "b", 0.8)] + GOOD[2:], "duplicate (user_id, item_id) pairs"),
        (GOOD[:1] + [("u1", 3, "c", 0.8)] + GOOD[2:], "ranks are not 1..N per user_id (e.g. user_id u1)"),
        (GOOD[:2], "1 active users have no recommendations, e.g. ['u2']"),
        (GOOD[:3] + [("u2", 2, "zz", 0.1)], "1 rows recommend items outside the catalogue"),
        (GOOD[:3] + [("u2", 2, "d", float("nan"))], "1 scores are not finite"),
    ],
)
def test_checks_name_what_failed(rows, failure):
    table = topn(rows)
    failures = pub.check_user_topn(table.to_pandas(), HISTORIES, CATALOGUE, table.schema)
    assert any(failure in f for f in failures), failures


def test_schema_must_match_the_contract():
    table = topn(GOOD).drop_columns(["ds"])
    failures = pub.check_user_topn(table.to_pandas(), HISTORIES, CATALOGUE, table.schema)
    assert any("schema differs from the contract" in f for f in failures)


def test_item_similar_checks():
    good = item_similar_table(["a", "a"], [1, 2], ["b", "c"], [0.5, 0.4], "m/1", "2026-01-01")
    assert pub.check_item_similar(good.to_pandas(), CATALOGUE, good.schema) == []
    bad = item_similar_table(["a", "a"], [1, 2], ["a", "c"], [0.5, 0.4], "m/1", "2026-01-01")
    assert pub.check_item_similar(bad.to_pandas(), CATALOGUE) == ["1 rows list an item as similar to itself"]


def tables(rows=GOOD):
    return {"user_topn": topn(rows), "item_similar": item_similar_table(["a"], [1], ["b"], [0.5], "m/1", "2026-01-01")}


def test_publish_writes_version_manifest_then_pointer(object_store):
    with pytest.raises(NothingPublished):
        PublishedTables(object_store).manifest()
    manifest = pub.publish_version(object_store, "2026-01-01", tables(), "m/1", {"metrics": {"x": 1.0}})
    version = manifest["version"]
    assert version.startswith("2026-01-01_")
    assert json.loads(object_store.read_bytes(pub.LATEST_KEY))["version"] == version
    assert manifest["tables"]["user_topn"]["rows"] == 4
    assert [c["name"] for c in manifest["tables"]["user_topn"]["schema"]] == [
        "user_id",
        "rank",
        "item_id",
        "score",
        "model_version",
        "ds",
    ]
    reader = PublishedTables(object_store)
    assert reader.recommendations_for("u1")["item_id"].tolist() == ["b", "c"]
    assert reader.similar_items("a")["similar_item_id"].tolist() == ["b"]
    assert reader.table("user_topn").num_rows == 4


def test_republishing_identical_tables_is_a_no_op(object_store):
    first = pub.publish_version(object_store, "2026-01-01", tables(), "m/1", {})
    keys = object_store.list("versions/")
    again = pub.publish_version(object_store, "2026-01-01", tables(), "m/1", {})
    assert again["version"] == first["version"] and object_store.list("versions/") == keys


def test_readers_see_the_old_version_until_the_pointer_switches(object_store):
    old = pub.publish_version(object_store, "2026-01-01", tables(), "m/1", {})
    newer_rows = [("u1", 1, "d", 0.9)] + GOOD[2:]
    # A publish that dies after writing table files but before its manifest: readers are unaffected.
    files = {
        n: pub._parquet_bytes(t, "user_id" if n == "user_topn" else "item_id") for n, t in tables(newer_rows).items()
    }
    version = f"2026-01-02_{pub.table_digest(files)[:12]}"
    object_store.write_bytes(f"{pub.version_prefix(version)}/user_topn/part-00000.parquet", files["user_topn"])
    assert PublishedTables(object_store).manifest()["version"] == old["version"]
    assert PublishedTables(object_store).recommendations_for("u1")["item_id"].tolist() == ["b", "c"]
    # The rerun completes the version and switches the pointer.
    new = pub.publish_version(object_store, "2026-01-02", tables(newer_rows), "m/1", {})
    assert new["version"] == version
    assert PublishedTables(object_store).recommendations_for("u1")["item_id"].tolist() == ["d"]

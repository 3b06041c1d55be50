"""Publishing versions: manifest last, the `latest` switch, reruns, interruptions, rollback, pruning
(local directory and a real S3 server)."""

import json

import pytest

from recsys_lib import publish as pub
from recsys_lib.errors import NothingPublished, RollbackRefused, StorageError
from recsys_lib.reader import PublishedTables
from recsys_lib.recommend import item_similar_table, user_topn_table
from recsys_lib.storage import Storage

GOOD = [("u1", 1, "b", 0.9), ("u1", 2, "c", 0.8), ("u2", 1, "a", 0.7), ("u2", 2, "d", 0.1)]


def topn(rows, reasons=None):
    users, ranks, items, scores = zip(*rows)
    return user_topn_table(list(users), list(ranks), list(items), list(scores), "m/1", "2026-01-01", reasons)


def tables(rows=GOOD):
    return {"user_topn": topn(rows), "item_similar": item_similar_table(["a"], [1], ["b"], [0.5], "m/1", "2026-01-01")}


def test_publish_writes_version_manifest_then_pointer(object_store):
    with pytest.raises(NothingPublished):
        PublishedTables(object_store).manifest()
    manifest = pub.publish_version(object_store, "2026-01-01", tables(), "m/1", {"metrics": {"x": 1.0}})
    version = manifest["version"]
    assert version.startswith("2026-01-01_")
    assert json.loads(object_store.read_bytes(Storage.LATEST))["version"] == version
    assert manifest["tables"]["user_topn"]["rows"] == 4
    assert [c["name"] for c in manifest["tables"]["user_topn"]["schema"]] == [
        "user_id",
        "rank",
        "item_id",
        "score",
        "model_version",
        "ds",
        "reason_item_id",
        "source",
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


class DiesBeforeTheManifest:
    """The store, except that the process 'dies' when it comes to write a manifest: a fault
    injected by wrapping, since a crash at that exact point cannot be caused from outside."""

    def __init__(self, store):
        self.store = store

    def write_bytes(self, key, data):
        if key.endswith(Storage.MANIFEST_FILE):
            raise KeyboardInterrupt("killed mid-publish")
        return self.store.write_bytes(key, data)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_an_interrupted_publish_is_invisible_and_a_rerun_completes_it(object_store):
    old = pub.publish_version(object_store, "2026-01-01", tables(), "m/1", {})
    newer = tables([("u1", 1, "d", 0.9)] + GOOD[2:])
    with pytest.raises(KeyboardInterrupt):
        pub.publish_version(DiesBeforeTheManifest(object_store), "2026-01-02", newer, "m/2", {})
    assert len(object_store.list_dirs("versions")) == 2  # the table files of the new version exist
    reader = PublishedTables(object_store)
    assert reader.manifest()["version"] == old["version"]
    assert reader.recommendations_for("u1")["item_id"].tolist() == ["b", "c"]
    assert [m["version"] for m in pub.list_versions(object_store)] == [old["version"]]  # incomplete: unlisted
    # The rerun writes the same version id, completes it and switches the pointer.
    new = pub.publish_version(object_store, "2026-01-02", newer, "m/2", {})
    assert reader.manifest()["version"] == new["version"] != old["version"]
    assert reader.recommendations_for("u1")["item_id"].tolist() == ["d"]


def publish_days(store, days):
    """One version per day, each with a different top item for u1 (so each digest differs)."""
    out = []
    for n, item in enumerate(days):
        rows = [("u1", 1, item, 0.9)] + GOOD[2:]
        out.append(pub.publish_version(store, f"2026-01-0{n + 1}", tables(rows), f"m/{n + 1}", {}))
    return out


def test_rollback_restores_the_exact_previous_bytes(object_store):
    first, second = publish_days(object_store, ["b", "d"])
    reader = PublishedTables(object_store)
    before = {
        k: object_store.read_bytes(k)
        for f in reader.manifest(first["version"])["tables"].values()
        for k in [f["files"][0]["key"]]
    }
    live, restored = pub.rollback(object_store)
    assert (live["version"], restored["version"]) == (second["version"], first["version"])
    assert reader.manifest()["version"] == first["version"]
    for entry in reader.manifest()["tables"].values():
        assert object_store.read_bytes(entry["files"][0]["key"]) == before[entry["files"][0]["key"]]
    assert reader.recommendations_for("u1")["item_id"].tolist() == ["b"]
    # Rolling forward again by name.
    pub.rollback(object_store, to=second["version"])
    assert reader.recommendations_for("u1")["item_id"].tolist() == ["d"]


def test_rollback_refuses_what_it_cannot_restore(object_store):
    with pytest.raises(NothingPublished, match="nothing published"):
        pub.rollback(object_store)
    (only,) = publish_days(object_store, ["b"])
    with pytest.raises(RollbackRefused, match="oldest version kept"):
        pub.rollback(object_store)
    with pytest.raises(RollbackRefused, match="no complete version 'nope'"):
        pub.rollback(object_store, to="nope")
    second = publish_days(object_store, ["b", "d"])[1]
    key = only["tables"]["user_topn"]["files"][0]["key"]
    object_store.write_bytes(key, b"tampered")
    with pytest.raises(RollbackRefused, match="checksums"):
        pub.rollback(object_store)
    assert PublishedTables(object_store).manifest()["version"] == second["version"]  # still live


@pytest.mark.parametrize("pointer", [b'{"manifest": "versions/2', b'{"manifest": "versions/gone/_manifest.json"}'])
def test_a_broken_pointer_is_one_line_and_rollback_by_name_repairs_it(object_store, pointer):
    first, second = publish_days(object_store, ["b", "d"])
    object_store.write_bytes(Storage.LATEST, pointer)
    with pytest.raises(StorageError, match=r"latest\.json is unreadable or names a version that is gone .*--to"):
        PublishedTables(object_store).manifest()
    with pytest.raises(StorageError, match="rollback --to"):
        pub.rollback(object_store)  # which version is "the one before" is unknown
    live, restored = pub.rollback(object_store, to=first["version"])
    assert (live["version"], restored["version"]) == ("(unreadable)", first["version"])
    assert PublishedTables(object_store).recommendations_for("u1")["item_id"].tolist() == ["b"]


def test_prune_keeps_the_newest_versions_and_the_live_one(object_store):
    versions = [m["version"] for m in publish_days(object_store, ["a", "b", "c", "d"])]
    pub.rollback(object_store, to=versions[0])  # the oldest is live now
    deleted = pub.prune_versions(object_store, keep=2)
    assert deleted == versions[1:2]
    assert [m["version"] for m in pub.list_versions(object_store)] == [versions[0], *versions[2:]]
    assert object_store.list(Storage.published_version(versions[1]) + "/") == []


def test_large_tables_are_cut_into_files_at_key_boundaries(object_store):
    rows = [(f"u{u}", r, f"i{r}", 1.0 / r) for u in range(5) for r in (1, 2, 3)]
    manifest = pub.publish_version(object_store, "2026-01-01", tables(rows), "m/1", {}, rows_per_file=4)
    files = manifest["tables"]["user_topn"]["files"]
    # 4 rows per file, but a user's 3 rows never straddle two files: 6 + 6 + 3 rows.
    assert [f["rows"] for f in files] == [6, 6, 3]
    assert [(f["min_key"], f["max_key"]) for f in files] == [("u0", "u1"), ("u2", "u3"), ("u4", "u4")]
    reader = PublishedTables(object_store)
    assert reader.recommendations_for("u3")["item_id"].tolist() == ["i1", "i2", "i3"]
    assert reader.table("user_topn").num_rows == 15
    assert reader.recommendations_for("nobody").empty



def test_a_backfill_is_kept_as_a_version_ordered_by_ds_and_pruned_first(object_store):
    later, = publish_days(object_store, ["x", "y"])[1:]  # 2026-01-01 and 2026-01-02, the second live
    rows = [("u1", 1, "old", 0.9)] + GOOD[2:]
    backfill = pub.publish_version(object_store, "2025-12-31", tables(rows), "m/9", {}, make_live=False)
    assert PublishedTables(object_store).manifest()["version"] == later["version"]  # still live
    listed = [m["ds"] for m in pub.list_versions(object_store)]
    assert listed == ["2025-12-31", "2026-01-01", "2026-01-02"]  # by ds, though published last
    assert pub.prune_versions(object_store, keep=2) == [backfill["version"]]

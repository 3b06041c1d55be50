"""Reading the published tables: one key's rows, whole tables, file lists, before anything is live."""

import pytest

from recsys_lib import publish as pub
from recsys_lib.errors import NothingPublished
from recsys_lib.reader import PublishedTables
from recsys_lib.recommend import item_similar_table, user_topn_table


def publish(store, rows, rows_per_file=2):
    users, ranks, items, scores = zip(*rows)
    tables = {
        "user_topn": user_topn_table(list(users), list(ranks), list(items), list(scores), "m/1", "2026-01-01"),
        "item_similar": item_similar_table(["a", "a", "b"], [1, 2, 1], ["b", "c", "a"], [0.9, 0.5, 0.9], "m/1",
                                           "2026-01-01"),
    }  # fmt: skip
    return pub.publish_version(store, "2026-01-01", tables, "m/1", {}, rows_per_file=rows_per_file)


def test_nothing_published_yet_is_a_named_error(object_store):
    with pytest.raises(NothingPublished, match="nothing published yet"):
        PublishedTables(object_store).recommendations_for("u1")


def test_one_users_rows_come_ranked_from_the_one_file_that_holds_them(object_store):
    manifest = publish(object_store, [("u2", 2, "c", 0.1), ("u1", 1, "b", 0.9), ("u2", 1, "a", 0.7)], rows_per_file=1)
    reader = PublishedTables(object_store)
    files = reader.files("user_topn")
    assert len(files) == 2 and files == [object_store.uri(f["key"]) for f in manifest["tables"]["user_topn"]["files"]]
    assert reader.recommendations_for("u2")["item_id"].tolist() == ["a", "c"]
    assert reader.recommendations_for(1)["item_id"].tolist() == []  # ids are strings; "1" is nobody
    assert reader.similar_items("a")[["rank", "similar_item_id"]].values.tolist() == [[1, "b"], [2, "c"]]
    assert reader.table("user_topn", columns=["user_id"]).num_rows == 3
    assert reader.manifest(manifest["version"]) == reader.manifest()

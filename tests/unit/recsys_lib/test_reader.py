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


def test_search_answers_a_text_query_from_the_versions_own_encoder(object_store, tiny_encoder, tmp_path):
    import numpy as np
    import pandas as pd

    from recsys_lib.embedding import ItemVectors
    from recsys_lib.models.inference import export_query_encoder
    from recsys_lib.models.two_tower import TokenizedDocuments, TwoTowerModel, embed_text
    from recsys_lib.recommend import item_vectors_table, user_vectors_table

    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05)
    texts = ["space adventure with robots", "a quiet french romance", "heist thriller in a bank", "cartoon toys"]
    vectors = embed_text(model, TokenizedDocuments.from_texts(tokenizer, texts, 16), 8, "cpu").numpy()
    items = ItemVectors(pd.Index(["a", "b", "c", "d"], dtype=object), vectors, np.zeros(4, np.float32))
    # User vectors are published as the model's queries: unit vector / T.
    tables = {"item_vectors": item_vectors_table(items, "m/1"),
              "user_vectors": user_vectors_table(["fan"], vectors[[3]] / 0.05, "m/1")}  # fmt: skip
    files = export_query_encoder(model, tokenizer, tmp_path / "export")
    manifest = pub.publish_version(object_store, "2026-01-01", tables, "m/1", {}, artefacts={"query_encoder": files})
    assert pub.verify_version(object_store, manifest) == []
    assert {f["key"].rsplit("/", 1)[1] for f in manifest["artefacts"]["query_encoder"]["files"]} == set(files)

    reader = PublishedTables(object_store, cache_dir=tmp_path / "cache")
    found = reader.search("heist thriller in a bank", k=2)
    assert found["item_id"].tolist()[0] == "c" and found["score"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert found["rank"].tolist() == [1, 2] and not found["personalised"].any()
    plain = reader.search("heist thriller in a bank", k=4)["item_id"].tolist()
    for_fan = reader.search("heist thriller in a bank", k=4, user_id="fan")
    assert for_fan["personalised"].all()
    assert for_fan["item_id"].tolist().index("d") < plain.index("d")  # the fan's taste moves their item up
    assert for_fan["item_id"].iloc[0] == "c"  # ... but the query still decides what is relevant
    assert not reader.search("cartoon", user_id="stranger")["personalised"].any()  # no vector: plain search
    with pytest.raises(ValueError, match="the query is empty"):
        reader.search("   ")


def test_search_on_a_version_without_an_encoder_says_so(object_store, tmp_path):
    publish(object_store, [("u1", 1, "a", 0.5)])
    with pytest.raises(NothingPublished, match="has no query encoder"):
        PublishedTables(object_store, cache_dir=tmp_path).search("anything")


def test_a_session_is_the_mean_of_its_items_published_vectors_scored_as_a_user(object_store):
    from recsys_lib.errors import NotInVersion
    from recsys_lib.recommend import item_vectors_table
    from tests.conftest import hand_made_items

    items = hand_made_items(bias=(0.0, 0.0, 0.0, 0.0, 1.5))  # a = e0, b = e1, c = (a + b) / sqrt 2, d = -a, e = e2
    tables = {"item_vectors": item_vectors_table(items, "m/1")}
    pub.publish_version(object_store, "2026-01-01", tables, "m/1", {"temperature": 0.5})
    reader = PublishedTables(object_store)
    # The mean of a and b points at c: cosine 1 / T = 2; e: 0 + bias 1.5; d: -0.707 / T. a, b are the session.
    session = reader.for_session(["a", "b", "not-in-catalogue"], k=5)
    assert session["item_id"].tolist() == ["c", "e", "d"] and session["rank"].tolist() == [1, 2, 3]
    assert session["score"].tolist() == pytest.approx([2.0, 1.5, -2**0.5], abs=1e-5)
    assert (session["model_version"] == "m/1").all()
    with pytest.raises(NotInVersion, match="none of the 1 items"):
        reader.for_session(["zzz"])
    with pytest.raises(ValueError, match="at least 1"):
        reader.for_session(["a"], k=0)
    # A version published before the temperature was: a named error, not a wrong score.
    pub.publish_version(object_store, "2026-01-02", tables, "m/1", {})
    with pytest.raises(NothingPublished, match="has no temperature"):
        reader.for_session(["a"])

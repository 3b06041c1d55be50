"""The top-N rules on hand-written vectors with exact expected rankings, and the whole ranking
path (retriever -> rules -> table) through an untrained tiny model."""

import numpy as np
import pandas as pd
import pytest

from recsys_lib import recommend as rec
from recsys_lib.index import exact_search
from recsys_lib.retrieval import Retriever, build_item_index
from recsys_lib.rules import BusinessRules
from recsys_lib.schema import USER_TOPN_SCHEMA
from recsys_lib.settings import IndexSettings
from tests.conftest import hand_made_items

# Four items on the unit circle at 0, 90, 180 and 270 degrees.
ITEMS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)


def exact(queries, k):
    return exact_search(ITEMS, queries, k)


def test_exclude_and_truncate_keeps_order_and_pads():
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], dtype=np.float32)
    ids = np.array([[3, 1, 2, -1]])
    s, i = rec.exclude_and_truncate(scores, ids, [np.array([1])], 3)
    assert i.tolist() == [[3, 2, -1]]
    assert s[0, :2].tolist() == pytest.approx([0.9, 0.7]) and s[0, 2] == -np.inf


def test_top_n_excludes_seen_items():
    user = np.array([[1, 0.1]], dtype=np.float32)  # closest: item 0, then 1, then 3, then 2
    scores, ids = rec.top_n(exact, user, [np.array([0])], n=2, n_items=4)
    assert ids.tolist() == [[1, 3]]
    assert scores[0].tolist() == pytest.approx([0.1, -0.1])


def test_top_n_when_n_exceeds_unseen_catalogue():
    user = np.array([[1, 0]], dtype=np.float32)
    _, ids = rec.top_n(exact, user, [np.array([0, 1, 2])], n=3, n_items=4)
    assert ids.tolist() == [[3, -1, -1]]


def test_popular_unseen_fallback():
    popularity = np.array([5.0, 10.0, 0.0, 2.0])
    scores, ids = rec.popular_unseen(popularity, [np.array([1]), np.array([], dtype=np.int64)], 2)
    assert ids.tolist() == [[0, 3], [1, 0]]
    np.testing.assert_allclose(scores, [[0.5, 0.2], [1.0, 0.5]])


def test_similar_items_never_returns_the_item_itself():
    scores, ids = rec.similar_items(exact, ITEMS, n=2)
    assert ids[0].tolist() in ([1, 3], [3, 1])
    assert all(row[0] != i and row[1] != i for i, row in enumerate(ids))
    assert scores[0].tolist() == pytest.approx([0.0, 0.0])


def test_rank_users_uses_fallback_for_users_without_history():
    users = np.array([[0, 1], [0, 0]], dtype=np.float32)
    popularity = np.array([1.0, 4.0, 3.0, 2.0])
    fallback = np.array([False, True])  # second user: no usable history
    seen = [np.array([1]), np.array([1])]
    scores, ids = rec.rank_users(exact, users, seen, popularity, 2, batch_size=1, fallback=fallback)
    assert ids[0].tolist() in ([0, 2], [2, 0])  # both at 90 degrees from item 1's direction
    assert ids[1].tolist() == [2, 3]


def test_fallback_per_segment():
    import pandas as pd

    item_index = pd.Index(["a", "b", "c", "d"])
    popularity = np.array([1.0, 4.0, 3.0, 2.0])  # global order: b c d a
    segment_rows = pd.DataFrame(
        {
            "segment": ["kids", "kids", "tiny"],
            "item_id": ["a", "d", "c"],
            "n_users": [5, 2, 1],
            "segment_users": [30, 30, 3],
        }
    )
    by_segment = rec.SegmentPopularity.from_frame(segment_rows, item_index, popularity, min_users=10)
    assert "kids" in by_segment and "tiny" not in by_segment  # too few users: global fallback
    users = np.zeros((4, 2), dtype=np.float32)
    seen = [np.array([], dtype=np.int64), np.array([0]), np.array([], dtype=np.int64), np.array([], dtype=np.int64)]
    segments = np.array(["kids", "kids", "tiny", None], dtype=object)
    scores, ids = rec.rank_users(
        exact, users, seen, popularity, 3, batch_size=1, fallback=np.ones(4, bool),
        segments=segments, segment_popularity=by_segment,
    )  # fmt: skip
    # kids: a (5 users), d (2), then the global order breaks the tie among the rest: b.
    assert ids[0].tolist() == [0, 3, 1]
    assert ids[1].tolist() == [3, 1, 2]  # a seen
    assert ids[2].tolist() == ids[3].tolist() == [1, 2, 3]  # small or no segment: global
    assert scores[0, 0] == pytest.approx(1.0) and scores[0, 1] < 1.0


def test_ranked_rows_drops_padding_and_numbers_ranks():
    keys = np.array(["u1", "u2"])
    ids = np.array([[4, 5, -1], [-1, -1, -1]])
    scores = np.array([[0.5, 0.4, -np.inf], [-np.inf] * 3], dtype=np.float32)
    k, r, i, s = rec.ranked_rows(keys, ids, scores)
    assert k.tolist() == ["u1", "u1"] and r.tolist() == [1, 2] and i.tolist() == [4, 5]


def test_batches_group_users_by_seen_count():
    batches = rec.batches_by_seen(np.array([100, 1, 50, 2]), 2)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 0]]


def test_explain_picks_the_most_similar_history_item():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8]], dtype=np.float32)
    histories = [np.array([0, 1]), np.array([], dtype=np.int64), np.array([1])]
    ids = np.array([[2, 3], [0, 1], [0, -1]])
    reasons = rec.explain(vectors, histories, ids, batch_size=2)
    # User 0: item 2 is closest to 0, item 3 to 1; user 1 has no history (fallback): no reason;
    # user 2's only history item explains its one recommendation; padding stays -1.
    assert reasons.tolist() == [[0, 1], [-1, -1], [1, -1]]


def test_popularity_vector_follows_the_catalogue_order():
    stats = pd.DataFrame({"item_id": ["c", "zz", "a"], "n_users": [3, 9, 1]})  # zz: not in the catalogue
    assert rec.popularity_vector(pd.Index(list("abcd")), stats).tolist() == [1.0, 0.0, 3.0, 0.0]


@pytest.fixture
def retriever(tiny_two_tower):
    items = hand_made_items()
    flat = IndexSettings("flat", recall_queries=5, recall_k=3, hnsw_m=16, hnsw_ef_search=64, ivf_nprobe=8)
    return Retriever(tiny_two_tower, items, build_item_index(items, flat).index, batch_size=2)


def test_user_topn_ranks_explains_and_falls_back(retriever):
    histories = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "history": [["a", "b"], [], ["a", "unknown"]],
            "seen": [["a", "b", "c"], ["d"], ["a"]],
            "segment": [None, "kids", None],
        }
    )
    popularity = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    ranked = rec.user_topn(retriever, histories, popularity, 3, "m/7", "2026-01-01")
    table, counts = ranked.table, ranked.counts
    assert table.schema.equals(USER_TOPN_SCHEMA)
    rows = table.to_pandas()
    by_user = {u: g.sort_values("rank") for u, g in rows.groupby("user_id")}
    # u1 (mean of a and b; c seen): e (bias 15), then d (cosine -0.707 / T = -14.1).
    assert by_user["u1"]["item_id"].tolist() == ["e", "d"] and by_user["u1"]["rank"].tolist() == [1, 2]
    assert by_user["u1"]["score"].tolist() == pytest.approx([15.0, -14.1421], rel=1e-4)
    # Each recommendation is explained by the history item closest to it: e is orthogonal to a
    # and b (a tie, the first wins), d is closest to b.
    assert by_user["u1"]["reason_item_id"].tolist() == ["a", "b"]
    # u2 has no history: the most popular unseen items, scored by popularity / max, no reason.
    assert by_user["u2"]["item_id"].tolist() == ["a", "b", "c"]
    assert by_user["u2"]["score"].tolist() == pytest.approx([1.0, 0.8, 0.6])
    assert by_user["u2"]["reason_item_id"].isna().all()
    # u3's unknown history item is ignored: the user is a, which is seen; e's bias (15) beats
    # c's cosine with a (0.707 / T = 14.14).
    assert by_user["u3"]["item_id"].tolist()[:2] == ["e", "c"]
    assert set(rows["model_version"]) == {"m/7"} and set(rows["ds"]) == {"2026-01-01"}
    assert counts == {"users": 3, "interests_users": 0, "fallback_users": 1, "segment_fallback_users": 0,
                      "user_rows": 8}  # fmt: skip
    assert by_user["u1"]["source"].eq("history").all() and by_user["u2"]["source"].eq("popularity").all()
    # The vectors a service scores with: u1's is the mean of a and b over T = 0.05; u2 has none.
    vectors = ranked.vectors.to_pandas()
    assert vectors["user_id"].tolist() == ["u1", "u3"] and set(vectors["model_version"]) == {"m/7"}
    expected = np.zeros(32)
    expected[:2] = (1 / np.sqrt(2)) / 0.05
    np.testing.assert_allclose(vectors["vector"][0], expected, rtol=1e-5)
    # Its dot product with an item's vector, plus the item's bias, is the published score.
    items = rec.item_vectors_table(retriever.items, "m/7").to_pandas().set_index("item_id")
    score_e = np.dot(vectors["vector"][0], items.loc["e", "vector"]) + items.loc["e", "bias"]
    assert score_e == pytest.approx(by_user["u1"]["score"].iloc[0], rel=1e-5)


def test_a_user_without_history_who_says_what_they_like_is_served_from_their_words(tiny_two_tower, tiny_encoder):
    from transformers import AutoTokenizer

    from recsys_lib.words import WordsModel, used_matrix

    items = hand_made_items()
    flat = IndexSettings("flat", recall_queries=5, recall_k=3, hnsw_m=16, hnsw_ef_search=64, ivf_nprobe=8)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder))
    retriever = Retriever(tiny_two_tower, items, build_item_index(items, flat).index, 2, tokenizer)
    histories = pd.DataFrame({
        "user_id": ["new", "quiet", "old"], "history": [[], [], ["a"]], "seen": [["e"], [], ["a"]],
        "interests": ["space operas and jazz", None, "ignored: has a history"],
    })  # fmt: skip
    popularity = np.arange(5.0)
    assert rec.user_topn(retriever, histories, popularity, 2, "m/7", "2026-01-01").counts["interests_users"] == 0
    # One reference user, who said these very words and used b, c and e: the new user's list is
    # theirs, e (seen) out, then d, the most popular of the rest.
    said = retriever.words_vectors(["space operas and jazz"])
    words = WordsModel.fit(said, used_matrix([np.array([1, 2, 4])], 5), 1.0, popularity)
    ranked = rec.user_topn(retriever, histories, popularity, 3, "m/7", "2026-01-01", words=words)
    rows = ranked.table.to_pandas()
    by_user = {u: g.sort_values("rank") for u, g in rows.groupby("user_id")}
    assert by_user["new"]["item_id"].tolist() == ["c", "b", "d"]  # c and b tie: c is more popular
    assert by_user["new"]["source"].eq("interests").all() and by_user["new"]["reason_item_id"].isna().all()
    assert by_user["quiet"]["source"].eq("popularity").all() and by_user["old"]["source"].eq("history").all()
    assert ranked.counts["interests_users"] == 1 and ranked.counts["fallback_users"] == 1
    assert ranked.vectors.column("user_id").to_pylist() == ["old"]  # a user vector only from a history


def test_user_topn_applies_rules_and_segment_fallback(retriever):
    histories = pd.DataFrame(
        {"user_id": ["u1", "u2"], "history": [["a", "b"], []], "seen": [["a", "b"], []], "segment": [None, "kids"]}
    )
    popularity = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    blocked = np.array([False, False, True, False, False])  # c is withdrawn
    rules = BusinessRules(blocked, np.zeros(5, bool), np.full(5, -1))
    segments = pd.DataFrame({"segment": ["kids"], "item_id": ["d"], "n_users": [7], "segment_users": [30]})
    by_segment = rec.SegmentPopularity.from_frame(segments, retriever.items.ids, popularity, min_users=10)
    ranked = rec.user_topn(retriever, histories, popularity, 2, "m/7", "2026-01-01", rules, by_segment)
    rows, counts = ranked.table.to_pandas(), ranked.counts
    assert rows[rows.user_id == "u1"]["item_id"].tolist() == ["e", "d"]  # c would have been first
    assert rows[rows.user_id == "u2"]["item_id"].tolist() == ["d", "a"]  # the kids' favourite first
    assert counts["segment_fallback_users"] == 1


def test_item_similar_through_the_retriever(retriever):
    blocked = np.array([False, False, False, False, True])
    table = rec.item_similar(retriever, 2, "m/7", "2026-01-01", blocked)
    rows = table.to_pandas()
    assert rows[rows.item_id == "a"]["similar_item_id"].tolist() == ["c", "b"]  # cosine 0.707, then 0 (e blocked)
    assert rows[rows.item_id == "c"]["similar_item_id"].tolist()[0] in ("a", "b")
    assert (rows["item_id"] != rows["similar_item_id"]).all() and "e" not in set(rows["similar_item_id"])


class LastFirst:
    """A hand-written ranking function in the booster's place: it puts the retrieval order upside
    down (feature 1 is the retrieval rank)."""

    def predict(self, features):
        return features[:, 1]


def test_user_topn_with_a_ranker_reorders_users_with_history_only(retriever):
    from recsys_lib.ranker import EventLog, Ranker, RankingContext, ServedRanking

    histories = pd.DataFrame(
        {"user_id": ["u1", "u2"], "history": [["a", "b"], []], "seen": [["a", "b", "c"], []], "segment": [None, None]}
    )
    no_events = EventLog.from_frame(pd.DataFrame({"item_id": [], "timestamp": []}), retriever.items.ids)
    context = RankingContext(retriever.items, np.full(5, -1), no_events, 30)
    ranking = ServedRanking(Ranker(LastFirst(), 5, 30, True, {}), context, 10**9)
    popularity = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    rows = rec.user_topn(retriever, histories, popularity, 2, "m/7", "2026-01-01", ranking=ranking).table.to_pandas()
    # u1's unseen items by retrieval: e, then d; the ranker turns that around, and its score is published.
    assert rows[rows.user_id == "u1"]["item_id"].tolist() == ["d", "e"]
    assert rows[rows.user_id == "u1"]["score"].tolist() == [1.0, 0.0]
    assert rows[rows.user_id == "u2"]["item_id"].tolist() == ["a", "b"]  # the popularity fallback as before


def test_query_topn_answers_each_frequent_query_as_search_does(tiny_two_tower, tiny_encoder):
    from transformers import AutoTokenizer

    from recsys_lib.checks import check_query_topn
    from recsys_lib.schema import QUERY_TOPN_SCHEMA

    items = hand_made_items()
    flat = IndexSettings("flat", recall_queries=5, recall_k=3, hnsw_m=16, hnsw_ef_search=64, ivf_nprobe=8)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder))
    retriever = Retriever(tiny_two_tower, items, build_item_index(items, flat).index, 2, tokenizer)
    blocked = np.array([False, False, True, False, False])
    table = rec.query_topn(retriever, ["red shoes", "jazz"], 3, "m/7", "2026-01-01", blocked)
    assert table.schema.equals(QUERY_TOPN_SCHEMA)
    rows = table.to_pandas()
    for query in ("red shoes", "jazz"):
        cosine = items.vectors @ retriever.text_vectors([query])[0]  # search's score: no bias
        cosine[2] = -np.inf  # c is blocked
        got = rows[rows["query"] == query].sort_values("rank")
        assert got["item_id"].tolist() == [items.ids[i] for i in np.argsort(-cosine)[:3]]
        assert got["score"].tolist() == pytest.approx(np.sort(cosine)[::-1][:3].tolist(), rel=1e-4)
    assert check_query_topn(rows, {"a", "b", "d", "e"}, ["red shoes", "jazz"], table.schema) == []
    assert check_query_topn(rows, {"a", "b", "d", "e"}, ["red shoes", "jazz", "boots"], table.schema) == [
        "1 frequent queries have no results, e.g. ['boots']"
    ]
    empty = rec.query_topn(retriever, [], 3, "m/7", "2026-01-01")
    assert empty.num_rows == 0 and check_query_topn(empty.to_pandas(), {"a"}, [], empty.schema) == []

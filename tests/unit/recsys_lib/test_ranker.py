"""The second stage: features as of a cut-off (no later event leaks in), LambdaRank that learns a
signal the retriever misses and is used only when it wins, and rules after it."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from recsys_lib.embedding import ItemVectors
from recsys_lib.ranker import (
    FEATURES,
    EventLog,
    Ranker,
    RankingContext,
    ServedRanking,
    candidate_features,
    item_ease,
    item_neighbours,
    ndcg_of_lists,
    ranker_candidates,
    retrieve,
    train_ranker,
)
from recsys_lib.retrieval import retrieval_items
from recsys_lib.rules import BusinessRules
from recsys_lib.settings import RankSettings

DAY = 86_400
ITEMS = pd.Index(["a", "b", "c"], dtype=object)
CFG = RankSettings(enabled=True, candidates=3, recent_days=30, rounds=50, learning_rate=0.1, num_leaves=7,
                   min_users=20, validation_share=0.5, knn_neighbours=0, ease_items=0, ease_l2=0.0,
                   prior_scale=0.0, ease_candidates=0)  # fmt: skip


def log_of(rows):
    return EventLog.from_frame(pd.DataFrame(rows, columns=["item_id", "timestamp"]), ITEMS)


def test_the_event_log_counts_only_earlier_events():
    events = log_of([("a", 10 * DAY), ("a", 50 * DAY), ("b", 20 * DAY), ("zz", DAY)])  # zz: not in the catalogue
    items, times = np.array([0, 0, 1, 2]), np.array([50 * DAY, 51 * DAY, 20 * DAY, 99 * DAY])
    assert events.count_before(items, times).tolist() == [1, 2, 0, 0]  # strictly before: the event at 50 is not
    first, last = events.first_last_before(items, times)
    assert first[:2].tolist() == [10 * DAY, 10 * DAY] and last[:2].tolist() == [10 * DAY, 50 * DAY]
    assert np.isnan(first[2:]).all()


def context(rows):
    vectors = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    items = ItemVectors(ITEMS, vectors, np.array([0.5, -0.5, 0.0], np.float32))
    return RankingContext(items, np.array([0, 1, -1]), log_of(rows), recent_days=30)


def test_features_by_hand_and_nothing_after_the_cut_off_changes_them():
    rows = [("a", 10 * DAY), ("a", 45 * DAY), ("b", 44 * DAY)]
    ids, scores = np.array([[1, 0, -1]]), np.array([[2.0, 1.0, -np.inf]], np.float32)
    at = np.array([50 * DAY])
    f = candidate_features(context(rows), [np.array([0, 0])], at, ids, scores)
    named = dict(zip(FEATURES, f[0, 1]))  # candidate a, second in the retrieval order
    assert named["retrieval_score"] == 1.0 and named["retrieval_rank"] == 1 and named["item_bias"] == 0.5
    assert named["log_popularity"] == pytest.approx(np.log1p(2)) and named["log_recent"] == pytest.approx(np.log1p(1))
    assert named["recent_share"] == 0.5 and named["item_age_days"] == 40 and named["days_since_last"] == 5
    assert named["category_affinity"] == 1.0 and named["sim_recent"] == pytest.approx(1.0)  # the history is a, a
    assert dict(zip(FEATURES, f[0, 0]))["category_affinity"] == 0.0  # b is in another category
    assert np.isnan(f[0, 2]).all()  # padding
    later = rows + [("a", 50 * DAY), ("b", 60 * DAY), ("c", 70 * DAY)]  # at or after the cut-off
    np.testing.assert_array_equal(candidate_features(context(later), [np.array([0, 0])], at, ids, scores), f)


def test_history_features_in_blocks_equal_each_users_own_computation():
    """The batched features (histories padded per block of users) against one user at a time, by
    hand: any history length, none, and longer than the ranker reads; one time for all users (each
    item looked up once) and a time per user."""
    rng = np.random.default_rng(3)
    n, d, u, m = 60, 8, 300, 7
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    item_ids = pd.Index([f"i{i}" for i in range(n)], dtype=object)
    events = pd.DataFrame({"item_id": item_ids[rng.integers(0, n, 2000)], "timestamp": rng.integers(0, 90, 2000) * DAY})
    ctx = RankingContext(ItemVectors(item_ids, vectors, np.zeros(n, np.float32)), rng.integers(-1, 4, n),
                         EventLog.from_frame(events, item_ids), recent_days=30, history_items=6)  # fmt: skip
    histories = [rng.integers(0, n, rng.choice([0, 1, 3, 6, 11])) for _ in range(u)]
    ids = rng.integers(0, n, (u, m))
    ids[0, -2:] = -1
    scores = rng.standard_normal((u, m)).astype(np.float32)
    same_time = candidate_features(ctx, histories, np.full(u, 60 * DAY), ids, scores)
    own_times = candidate_features(ctx, histories, np.full(u, 60 * DAY) + np.arange(u) % 2, ids, scores)
    even = np.arange(0, u, 2)  # the users whose own time is 60 days: the same features either way
    np.testing.assert_array_equal(own_times[even], same_time[even])
    for row, history in enumerate(histories):
        f = dict(zip(FEATURES, np.moveaxis(same_time[row], 1, 0)))
        history, valid = history[-6:], ids[row] >= 0
        assert np.allclose(f["user_log_events"][valid], np.log1p(len(history)))
        if not len(history):
            assert np.isnan(f["sim_max"]).all() and np.isnan(f["category_affinity"]).all()
            continue
        cand, hist = vectors[ids[row].clip(min=0)], vectors[history]
        unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
        same = (ctx.categories[history][None, :] == ctx.categories[ids[row].clip(min=0)][:, None]).mean(1)
        expected = {
            "sim_max": (cand @ hist.T).max(1),
            "sim_history": cand @ unit(hist.mean(0)),
            "sim_recent": cand @ unit(hist[-5:].mean(0)),
            "category_affinity": np.where(ctx.categories[ids[row].clip(min=0)] < 0, 0.0, same),
        }
        for name, value in expected.items():
            np.testing.assert_allclose(f[name][valid], value[valid], rtol=1e-5, atol=1e-6, err_msg=name)
            assert np.isnan(f[name][~valid]).all()


def test_the_knn_score_sums_co_occurrence_cosines_with_the_history():
    pairs = pd.DataFrame([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "c"),
                          ("u4", "zz")], columns=["user_id", "item_id"])  # fmt: skip  # zz: not in the catalogue
    ctx = dataclasses.replace(context([]), neighbours=item_neighbours(pairs, ITEMS, k=10))
    ids, scores = np.array([[1, 2], [0, 2]]), np.ones((2, 2), np.float32)
    f = candidate_features(ctx, [np.array([0]), np.array([1, 1])], np.array([DAY, DAY]), ids, scores)
    knn = f[..., FEATURES.index("knn_score")]
    # a: 3 users, b: 2, c: 1; a and b share 2 users, a and c one, b and c none (shrink 10)
    assert knn[0] == pytest.approx([2 / (np.sqrt(6) + 10), 1 / (np.sqrt(3) + 10)])
    assert knn[1] == pytest.approx([2 / (np.sqrt(6) + 10), 0.0])  # a repeated history item counts once


def test_the_neighbour_table_scores_candidates_as_the_sparse_product_does():
    import scipy.sparse as sp

    from recsys_lib.baselines import history_indicator
    from recsys_lib.ranker import Neighbours

    rng = np.random.default_rng(0)
    similarity = sp.random(40, 40, density=0.15, format="csr", random_state=0, dtype=np.float32)
    similarity[:, 5] = 0.0  # an item with no neighbours
    similarity.eliminate_zeros()
    seen = [rng.integers(0, 40, rng.integers(0, 8)) for _ in range(70)]  # none, repeats, several
    ids = rng.integers(0, 40, (70, 12))
    expected = np.take_along_axis((history_indicator(seen, 40) @ similarity).toarray(), ids, axis=1)
    np.testing.assert_allclose(Neighbours.from_similarity(similarity).scores(seen, ids, block=16), expected, rtol=1e-6)


def test_the_ease_score_sums_the_candidates_weights_from_the_history():
    pairs = pd.DataFrame([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "c")],
                         columns=["user_id", "item_id"])  # fmt: skip
    ease = item_ease(pairs, ITEMS, max_items=2, l2=1.0)  # c is the least popular: not covered
    ctx = dataclasses.replace(context([]), ease=ease)
    ids, scores = np.array([[1, 2, 0]]), np.ones((1, 3), np.float32)
    f = candidate_features(ctx, [np.array([0, 2])], np.array([DAY]), ids, scores)
    # over a and b: gram [[3, 2], [2, 2]] + I, inverse P; B[a, b] = -P[a, b] / P[b, b]
    p = np.linalg.inv(np.array([[4.0, 2.0], [2.0, 3.0]]))
    ease_score = f[0, :, FEATURES.index("ease_score")]
    assert ease_score[0] == pytest.approx(-p[0, 1] / p[1, 1]) and ease_score[2] == 0.0  # a's own weight is 0
    assert np.isnan(ease_score[1])  # c: not covered
    assert f[0, :, FEATURES.index("ease_rank")].tolist() == [0, 2, 1]


def co_occurrence_world(rng, n_items=40, n_users=300):
    """Each user's held-out item is the candidate other users took together with the user's one
    history item (i with i + 20); the retrieval order is random."""
    item_ids = pd.Index([f"i{n}" for n in range(n_items)], dtype=object)
    partner = (np.arange(n_items) + n_items // 2) % n_items
    together = [(f"o{i}-{k}", item_ids[j]) for i in range(n_items) for k in range(5) for j in (i, partner[i])]
    seen = rng.integers(0, n_items, n_users)
    target = partner[seen]
    ids = np.stack([rng.permutation([t, *rng.choice(np.setdiff1d(np.arange(n_items), [t, s]), 2, replace=False)])
                    for t, s in zip(target, seen)])  # fmt: skip
    no_events = EventLog.from_frame(pd.DataFrame(columns=["item_id", "timestamp"]), item_ids)
    items = ItemVectors(item_ids, np.eye(n_items, 4, dtype=np.float32), np.zeros(n_items, np.float32))
    ctx = RankingContext(items, np.full(n_items, -1), no_events, 30)
    scores = np.sort(rng.random((n_users, 3)).astype(np.float32), axis=1)[:, ::-1].copy()
    histories, times = [np.array([s]) for s in seen], np.full(n_users, 400 * DAY)
    return pd.DataFrame(together, columns=["user_id", "item_id"]), ctx, histories, times, target, scores, ids


def test_the_trees_correct_the_best_collaborative_order_and_use_as_few_rounds_as_win():
    pairs, ctx, histories, times, target, scores, ids = co_occurrence_world(np.random.default_rng(1))
    ctx = dataclasses.replace(ctx, ease=item_ease(pairs, ctx.items.ids, max_items=100, l2=1.0))
    cfg = dataclasses.replace(CFG, ease_items=100, ease_l2=1.0, prior_scale=0.3)
    ranker = train_ranker(ctx, histories, times, target, scores, ids, cfg, k=1, seed=0)
    # EASE's order alone finds every partner: the trees add nothing, so none are used
    assert ranker.use and ranker.prior == "ease_rank" and ranker.rounds == 0 and ranker.check["ranker_ndcg"] == 1.0
    _, reranked = ranker.rerank(ctx, histories, times, scores, ids)
    assert ndcg_of_lists(reranked, target, 1) == 1.0
    served = ranker.context(ctx.items, ctx.categories, ctx.events, pairs)
    np.testing.assert_array_equal(served.ease.weights, ctx.ease.weights)


def test_with_nothing_better_than_the_retrieval_order_the_ranker_is_not_used():
    pairs, ctx, histories, times, target, scores, ids = co_occurrence_world(np.random.default_rng(2))
    first = np.argmax(ids == target[:, None], axis=1)
    ids[np.arange(len(ids)), first], ids[:, 0] = ids[:, 0].copy(), target  # the retriever puts the target first
    ranker = train_ranker(ctx, histories, times, target, scores, ids, dataclasses.replace(CFG, prior_scale=0.3), 1, 0)
    assert ranker.prior == "retrieval_rank" and not ranker.use  # it can at best tie the order it starts from


def test_the_ranker_learns_co_occurrence_the_retriever_misses():
    pairs, ctx, histories, times, target, scores, ids = co_occurrence_world(np.random.default_rng(0))
    ctx = dataclasses.replace(ctx, neighbours=item_neighbours(pairs, ctx.items.ids, k=10))
    ranker = train_ranker(ctx, histories, times, target, scores, ids, dataclasses.replace(CFG, knn_neighbours=10), 1, 0)
    assert ranker.use and ranker.knn_neighbours == 10 and "knn_score" in ranker.features
    _, reranked = ranker.rerank(ctx, histories, times, scores, ids)
    assert ndcg_of_lists(reranked, target, 1) > 0.9 > ndcg_of_lists(ids, target, 1)
    with pytest.raises(ValueError, match="pairs"):
        ranker.context(ctx.items, ctx.categories, ctx.events)  # no pairs: no neighbours to build it from
    served = ranker.context(ctx.items, ctx.categories, ctx.events, pairs)
    np.testing.assert_array_equal(served.neighbours.similarity, ctx.neighbours.similarity)


def problem(n_users=200, seed=0):
    """Users whose held-out item is the one of their three candidates that was popular lately,
    while the retrieval order is random: a signal only the ranker's features carry."""
    rng = np.random.default_rng(seed)
    n_items = 30
    vectors = rng.normal(size=(n_items, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    item_ids = pd.Index([f"i{n}" for n in range(n_items)], dtype=object)
    times = np.full(n_users, 400 * DAY)
    # Items 0-14 trend lately, 15-29 do not; each user's candidates hold one of each kind and
    # another dull one, in random order, and the user takes the trending one.
    target = rng.integers(0, 15, n_users)
    ids = np.stack([rng.permutation([t, *rng.choice(np.arange(15, 30), 2, replace=False)]) for t in target])
    events = [(item_ids[i], 390 * DAY - k) for i in range(15) for k in range(5)]  # lately
    events += [(item_ids[i], 100 * DAY + k) for i in range(n_items) for k in range(5)]  # everyone, long ago
    ctx = RankingContext(
        ItemVectors(item_ids, vectors, np.zeros(n_items, np.float32)),
        np.full(n_items, -1),
        EventLog.from_frame(pd.DataFrame(events, columns=["item_id", "timestamp"]), item_ids),
        30,
    )
    scores = np.sort(rng.random((n_users, 3)).astype(np.float32), axis=1)[:, ::-1].copy()
    histories = [rng.choice(n_items, 4) for _ in range(n_users)]
    return ctx, histories, times, target, scores, ids


def test_the_ranker_learns_what_the_retriever_misses_and_is_used_when_it_wins():
    ctx, histories, times, target, scores, ids = problem()
    ranker = train_ranker(ctx, histories, times, target, scores, ids, CFG, k=1, seed=0)
    assert ranker.use and ranker.check["ranker_ndcg"] > ranker.check["retrieval_ndcg"] + 0.3
    _, reranked = ranker.rerank(ctx, histories, times, scores, ids)
    assert ndcg_of_lists(reranked, target, 1) > 0.9 > ndcg_of_lists(ids, target, 1)


def test_too_few_users_teach_no_ranker(tmp_path):
    ctx, histories, times, target, scores, ids = problem(n_users=10)
    assert train_ranker(ctx, histories, times, target, scores, ids, CFG, k=1, seed=0) is None


def test_a_saved_ranker_scores_the_same(tmp_path):
    ctx, histories, times, target, scores, ids = problem()
    ranker = train_ranker(ctx, histories, times, target, scores, ids, CFG, k=1, seed=0)
    again = Ranker.load(ranker.save(tmp_path / "ranker"))
    features = candidate_features(ctx, histories[:5], times[:5], ids[:5], scores[:5])
    np.testing.assert_array_equal(again.score(features), ranker.score(features))
    assert (again.use, again.check, again.candidates) == (ranker.use, ranker.check, 3)
    assert again.features == ranker.features and "knn_score" not in again.features  # CFG: no item-kNN


def test_a_ranker_saved_before_a_feature_was_added_still_scores(tmp_path):
    ctx, histories, times, target, scores, ids = problem()
    ranker = train_ranker(ctx, histories, times, target, scores, ids, CFG, k=1, seed=0)
    folder = ranker.save(tmp_path / "ranker")
    meta = json.loads((folder / "ranker.json").read_text())
    del meta["knn_neighbours"]  # as an earlier release wrote it: no such field, its own feature list
    (folder / "ranker.json").write_text(json.dumps(meta))
    again = Ranker.load(folder)
    features = candidate_features(ctx, histories[:5], times[:5], ids[:5], scores[:5])
    np.testing.assert_array_equal(again.score(features), ranker.score(features))
    meta["features"].append("a_feature_from_the_future")
    (folder / "ranker.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="a_feature_from_the_future"):
        Ranker.load(folder)


class ExactRetriever:
    """Exact inner-product search over ``retrieval_items`` with given user queries."""

    def __init__(self, items, queries):
        self.items, self.queries, self.batch_size, self.banned = items, queries, 16, None
        self.rows = retrieval_items(items.vectors, items.bias)

    def user_queries(self, histories):
        return self.queries[: len(histories)], np.array([len(h) == 0 for h in histories])

    def search(self, queries, k):
        scores = queries @ self.rows.T
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, ids, axis=1), ids


def test_widened_candidates_carry_their_exact_retrieval_scores_once():
    items = ItemVectors(pd.Index(list("abcdef")), np.eye(6, 3, dtype=np.float32), np.arange(6, dtype=np.float32) / 10)
    queries = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 1.0]], np.float32)  # [user / T, 1]
    retriever = ExactRetriever(items, queries)
    seen = [np.array([1]), np.array([0])]
    also = np.array([[5, 2, -1], [3, 4, 1]])  # 5 and 1 are already retrieved for the user they are added to
    scores, ids = retrieve(retriever, [np.array([1]), np.array([0])], seen, 2, also)
    assert ids.tolist() == [[0, 5, 2, -1, -1], [1, 5, 4, 3, -1]]
    exact = queries @ retriever.rows.T
    for u in range(2):
        np.testing.assert_allclose(scores[u, ids[u] >= 0], exact[u, ids[u][ids[u] >= 0]], rtol=1e-6)
        assert np.isneginf(scores[u, ids[u] < 0]).all()


def test_ease_candidates_bring_what_the_retriever_misses_to_the_ranker():
    rng = np.random.default_rng(3)
    pairs, ctx, histories, times, target, _, _ = co_occurrence_world(rng)
    ease = item_ease(pairs, ctx.items.ids, max_items=100, l2=1.0)
    ctx = dataclasses.replace(ctx, ease=ease)
    # a retriever blind to co-occurrence: random queries over four-dimensional vectors
    retriever = ExactRetriever(ctx.items, rng.normal(size=(len(histories), 5)).astype(np.float32))
    plain = retrieve(retriever, histories, histories, 3)[1]
    assert (plain == target[:, None]).any(1).mean() < 0.5
    scores, ids = ranker_candidates(retriever, ease, histories, histories, 3, ease_candidates=2)
    assert ids.shape == (len(histories), 5) and (ids == target[:, None]).any(1).all()
    cfg = dataclasses.replace(CFG, ease_items=100, ease_l2=1.0, prior_scale=0.3, ease_candidates=2)
    ranker = train_ranker(ctx, histories, times, target, scores, ids, cfg, k=1, seed=0)
    assert ranker.use and ranker.ease_candidates == 2 and ranker.check["ranker_ndcg"] == 1.0
    served = ServedRanking(ranker, ranker.context(ctx.items, ctx.categories, ctx.events, pairs), 400 * DAY)
    n_items = len(ctx.items)
    _, top = served.rerank_users(retriever, histories, histories, 1, BusinessRules.none(n_items), np.ones(n_items))
    np.testing.assert_array_equal(top[:, 0], target)  # served: widened, re-ranked, the partner first


class MeanRetriever(ExactRetriever):
    """Exact search with each user's query the mean of their history's item rows (a pure
    function of the history, so any batch of users gets the same queries)."""

    def __init__(self, items):
        super().__init__(items, None)

    def user_queries(self, histories):
        queries = np.stack([self.rows[h].mean(axis=0) for h in histories]).astype(np.float32)
        return queries, np.array([len(h) == 0 for h in histories])


def test_users_ranked_in_batches_get_the_lists_they_get_all_at_once(monkeypatch):
    from recsys_lib import ranker as ranker_module

    rng = np.random.default_rng(3)
    pairs, ctx, histories, times, target, _, _ = co_occurrence_world(rng)
    ctx = dataclasses.replace(ctx, ease=item_ease(pairs, ctx.items.ids, max_items=100, l2=1.0))
    retriever = MeanRetriever(ctx.items)
    scores, ids = ranker_candidates(retriever, ctx.ease, histories, histories, 3, ease_candidates=2)
    cfg = dataclasses.replace(CFG, ease_items=100, ease_l2=1.0, prior_scale=0.3, ease_candidates=2)
    ranker = train_ranker(ctx, histories, times, target, scores, ids, cfg, k=1, seed=0)
    served = ranker.context(ctx.items, ctx.categories, ctx.events, pairs)
    whole = ranker.ranked(retriever, served, histories, times, histories, 3)
    monkeypatch.setattr(ranker_module, "RANK_BATCH", 7)  # 300 users: 43 batches, the last of 6
    batched = ranker.ranked(retriever, served, histories, times, histories, 3)
    np.testing.assert_array_equal(batched[1], whole[1])
    np.testing.assert_allclose(batched[0], whole[0], rtol=1e-6)


class FixedRetriever:
    """Three candidates per user in a fixed order (the ServedRanking's first stage)."""

    def __init__(self, items, order):
        self.items, self.order, self.batch_size = items, order, 16

    def user_queries(self, histories):
        return np.zeros((len(histories), 1), np.float32), np.zeros(len(histories), bool)

    def search(self, queries, k):
        return np.tile([3.0, 2.0, 1.0], (len(queries), 1))[:, :k], np.tile(self.order, (len(queries), 1))[:, :k]


def test_business_rules_apply_after_the_ranker():
    ctx, histories, times, target, scores, ids = problem()
    ranker = train_ranker(ctx, histories, times, target, scores, ids, CFG, k=1, seed=0)
    user = 0
    favourite = target[user]  # what the ranker puts first for this user
    others = [i for i in ids[user] if i != favourite]
    retriever = FixedRetriever(ctx.items, np.array(others + [favourite]))
    served = ServedRanking(dataclasses.replace(ranker, candidates=3), ctx, int(times[user]))
    n_items = len(ctx.items)
    none = BusinessRules.none(n_items)
    _, top = served.rerank_users(retriever, [histories[user]], [np.empty(0, np.int64)], 2, none, np.ones(n_items))
    assert top[0, 0] == favourite  # re-ranked from last to first
    blocked = dataclasses.replace(none, blocked=np.isin(np.arange(n_items), [favourite]))
    _, top = served.rerank_users(retriever, [histories[user]], [np.empty(0, np.int64)], 2, blocked, np.ones(n_items))
    assert favourite not in top[0] and (top[0] >= 0).all()  # blocked after ranking, the list still full

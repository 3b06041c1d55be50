"""Baselines on hand-made matrices: what each ranker must rank first, and the tuning search."""

from functools import partial

import numpy as np
import pytest

from recsys_lib import baselines as bl

# Users 0-2 like items {0, 1}, users 3-4 like {2, 3}; item 0 is the most popular.
ROWS = np.array([0, 0, 1, 1, 2, 3, 3, 4, 4, 5])
COLS = np.array([0, 1, 0, 1, 0, 2, 3, 2, 3, 0])
MATRIX = bl.interaction_matrix(ROWS, COLS, n_users=6, n_items=5)


def test_interaction_matrix_is_binary():
    m = bl.interaction_matrix(np.array([0, 0, 1]), np.array([2, 2, 0]), 2, 3)
    assert m.toarray().tolist() == [[0, 0, 1], [1, 0, 0]]


def test_top_k_excludes_and_pads():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    lists = bl.top_k(scores, [np.array([1]), np.array([0, 1, 2])], k=4)  # k beyond the catalogue
    assert lists.tolist() == [[2, 0, -1, -1], [-1, -1, -1, -1]]
    banned = bl.top_k(scores, [np.array([1]), np.array([], np.int64)], k=3, banned=np.array([2]))  # for every row
    assert banned.tolist() == [[0, -1, -1], [0, 1, -1]]


def test_most_popular():
    lists = bl.rank_users(bl.MostPopular().fit(MATRIX), np.array([3]), [MATRIX[3].indices], 2)
    assert lists.tolist() == [[0, 1]]  # item 0 (4 users), then item 1 (2 users)


def test_item_knn_recommends_the_co_consumed_item():
    knn = bl.ItemKNN(neighbours=2, shrink=0.0).fit(MATRIX)
    # User 2 has only item 0; item 1 co-occurs with it, items 2-3 never do.
    assert bl.rank_users(knn, np.array([2]), [MATRIX[2].indices], 1).tolist() == [[1]]
    # User 3 has items 2 and 3: nothing else co-occurs, so every other score is 0.
    assert knn.scores(np.array([3]))[0, [0, 1, 4]].tolist() == [0, 0, 0]


def test_item_knn_built_in_blocks_is_the_same_similarity():
    rng = np.random.default_rng(0)
    matrix = bl.interaction_matrix(rng.integers(0, 40, 300), rng.integers(0, 25, 300), 40, 25)
    whole = bl.ItemKNN(neighbours=5).fit(matrix).similarity
    blocked = bl.ItemKNN(neighbours=5, block=4).fit(matrix).similarity  # 7 blocks, the last one short
    assert whole.shape == blocked.shape == (25, 25) and (whole != blocked).nnz == 0
    assert np.diff(whole.tocsc().indptr).max() == 5  # each item (a column) keeps its 5 nearest


def test_ease_is_its_closed_form_over_the_most_popular_items():
    rng = np.random.default_rng(0)
    matrix = bl.interaction_matrix(rng.integers(0, 60, 500), rng.integers(0, 30, 500), 60, 32)  # 30, 31: unseen
    ease = bl.EASE(l2=5.0, max_items=20).fit(matrix)
    covered = np.argsort(-matrix.sum(axis=0).A1, kind="stable")[:20]
    x = matrix.toarray()[:, np.sort(covered)].astype(np.float64)
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(20))
    weights = -p / np.diag(p)
    np.fill_diagonal(weights, 0.0)
    np.testing.assert_allclose(ease.weights, weights, atol=1e-5)  # float32 Cholesky, mirrored in bands
    np.testing.assert_array_equal(ease.covered, np.sort(covered))
    scores = ease.scores(np.arange(60))
    assert np.isneginf(np.delete(scores, ease.covered, axis=1)).all()  # never recommended
    ids = rng.integers(0, 32, (60, 7))
    pairs = ease.pair_scores([matrix[u].indices for u in range(60)], ids, block=16)
    expected = np.take_along_axis(scores, ids, axis=1)
    np.testing.assert_allclose(pairs, np.where(np.isneginf(expected), np.nan, expected), atol=1e-5)
    assert np.isnan(pairs[~np.isin(ids, ease.covered)]).all()  # NaN: missing, for the ranker's trees


def test_ease_top_is_the_best_unseen_covered_items_in_order():
    rng = np.random.default_rng(1)
    matrix = bl.interaction_matrix(rng.integers(0, 40, 300), rng.integers(0, 25, 300), 40, 27)  # 25, 26: unseen
    ease = bl.EASE(l2=5.0, max_items=20).fit(matrix)
    seen = [matrix[u].indices for u in range(40)]
    scores = ease.scores(np.arange(40))
    for u, h in enumerate(seen):
        scores[u, h] = -np.inf
    top = ease.top(seen, 5, block=16)
    np.testing.assert_array_equal(top, np.argsort(-scores, axis=1, kind="stable")[:, :5])
    assert np.isin(top, ease.covered).all()
    wide = ease.top(seen[:3], 30)  # more than it covers: the unseen covered items, then padding
    for u in range(3):
        assert (wide[u] >= 0).sum() == len(np.setdiff1d(ease.covered, seen[u])) and (wide[u, 20:] == -1).all()
    # One batch of users' scores made once answer both questions as EASE does, for those users only.
    users = ease.of_users(seen)
    np.testing.assert_array_equal(users.top(seen, 5), top)
    ids = rng.integers(0, 27, (40, 6))
    np.testing.assert_array_equal(users.pair_scores(seen, ids), ease.pair_scores(seen, ids))
    with pytest.raises(ValueError, match="the users it was computed for"):
        users.top(list(seen), 5)


def test_ease_recommends_the_co_consumed_item():
    ease = bl.EASE(l2=0.5).fit(MATRIX)
    assert bl.rank_users(ease, np.array([2]), [MATRIX[2].indices], 1).tolist() == [[1]]


def test_tfidf_profile_is_the_mean_of_the_history():
    docs = ["red apple", "red cherry", "blue ocean", "blue sky", "green grass"]
    content = bl.TfidfContent(docs).fit(MATRIX)
    scores = content.scores_for_histories([np.array([0])], items=np.array([1, 2, 3]))
    assert scores[0, 0] > 0 and scores[0, 1] == 0 and scores[0, 2] == 0  # "red" is shared


def test_validation_ndcg_by_hand():
    # User 2's validation item is 1, the second most popular; with item 0 excluded it is first.
    pop = bl.MostPopular().fit(MATRIX)
    assert bl.validation_ndcg(pop, np.array([2]), np.array([1]), [np.array([0])], k=10) == pytest.approx(1.0)
    # Target ranked second (item 0 is not excluded): 1 / log2(3).
    assert bl.validation_ndcg(pop, np.array([2]), np.array([1]), [np.array([], int)], k=10) == pytest.approx(
        1 / np.log2(3)
    )
    assert bl.validation_ndcg(pop, np.array([2]), np.array([1]), [np.array([], int)], k=1) == 0.0  # not in the top 1


def test_tune_searches_one_parameter_at_a_time():
    calls = []

    class Probe:
        def __init__(self, a, b):
            calls.append((a, b))
            self.best = 0 if (a, b) == (3, 20) else 1  # ranks the target first only for (3, 20)

        def fit(self, matrix):
            return self

        def scores(self, users):
            s = np.zeros((len(users), 2))
            s[:, self.best] = 1.0
            return s

    best, trials = bl.tune(Probe, {"a": [1, 2, 3], "b": [10, 20, 30]}, MATRIX, np.array([0]), np.array([0]), [[]], k=10)
    assert best == {"a": 3, "b": 20}
    assert calls[0] == (2, 20)  # starts from the middle values
    assert len(calls) == len(set(calls)) == 5  # 3 + 3 - 1 shared start, no repeats, not 9


@pytest.mark.spark
def test_als_on_spark_separates_the_two_groups(spark):
    als = partial(bl.ALS, spark, iterations=10, seed=1)(rank=4, reg=0.01, alpha=10.0).fit(MATRIX)
    scores = als.scores(np.arange(6))
    assert scores.shape == (6, 5)
    assert scores[3, 2] > scores[3, 0] and scores[0, 1] > scores[0, 3]


@pytest.mark.parametrize(
    "make",
    [
        lambda: bl.Implicit("als", factors=4, regularization=0.01, alpha=10.0, iterations=10),
        lambda: bl.Implicit("bpr", factors=4, learning_rate=0.05, iterations=200),
        lambda: bl.Cornac(lambda: __import__("cornac").models.BPR(k=4, max_iter=300, learning_rate=0.05, seed=1,
                                                                  verbose=False)),
        lambda: bl.Cornac(lambda: __import__("cornac").models.BiVAECF(k=4, encoder_structure=[8], n_epochs=300,
                                                                      batch_size=8, learning_rate=0.01,
                                                                      likelihood="bern", seed=1, verbose=False)),
    ],
    ids=["implicit_als", "implicit_bpr", "cornac_bpr", "cornac_bivae"],
)
def test_library_peers_separate_the_two_groups(make):
    model = make().fit(MATRIX)
    scores = model.scores(np.arange(6))
    assert scores.shape == (6, 5)
    # A user of {0, 1} prefers the other item of the pair to the items of {2, 3}, and vice versa.
    assert scores[2, 1] > max(scores[2, 2], scores[2, 3]) and scores[4, 3] > max(scores[4, 0], scores[4, 1])


def test_cornac_never_recommends_an_item_it_never_saw():
    model = bl.Cornac(lambda: __import__("cornac").models.BPR(k=2, max_iter=5, seed=1, verbose=False)).fit(MATRIX)
    assert np.isneginf(model.scores(np.array([0]))[0, 4])  # item 4 has no interaction

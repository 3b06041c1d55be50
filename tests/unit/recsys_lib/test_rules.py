"""Business rules on hand-made candidate lists, and through the ranking they feed."""

import numpy as np
import pandas as pd
import pytest

from recsys_lib import recommend as rec
from recsys_lib.errors import StorageError
from recsys_lib.index import exact_search
from recsys_lib.rules import NO_CATEGORY, BusinessRules, build_rules
from tests.conftest import make_settings

N_ITEMS = 6


def rules(**kw):
    base = dict(
        blocked=np.zeros(N_ITEMS, bool),
        is_new=np.zeros(N_ITEMS, bool),
        category=np.array([0, 0, 0, 1, 1, NO_CATEGORY]),
    )
    return BusinessRules(**{**base, **kw})


SCORES = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]], dtype=np.float32)
IDS = np.array([[0, 1, 2, 3, 4, 5]])


def test_no_rules_pass_candidates_through():
    scores, ids = rules().apply(SCORES, IDS)
    assert ids.tolist() == IDS.tolist() and not rules().drops_candidates and rules().depth(5) == 5


def test_blocked_items_are_dropped():
    blocked = np.isin(np.arange(N_ITEMS), [1, 4])
    _, ids = rules(blocked=blocked).apply(SCORES, IDS)
    assert ids.tolist() == [[0, -1, 2, 3, -1, 5]]


def test_new_items_are_boosted_and_resorted():
    scores, ids = rules(is_new=np.isin(np.arange(N_ITEMS), [5]), new_item_boost=0.45).apply(SCORES, IDS)
    assert ids.tolist() == [[0, 5, 1, 2, 3, 4]]
    assert scores[0, 1] == pytest.approx(0.85)


def test_min_score_and_category_cap():
    _, ids = rules(min_score=0.55).apply(SCORES, IDS)
    assert ids.tolist() == [[0, 1, 2, 3, -1, -1]]
    _, ids = rules(max_per_category=1).apply(SCORES, IDS)
    assert ids.tolist() == [[0, -1, -1, 3, -1, 5]]  # one of category 0, one of 1, uncategorised free


def test_rank_users_applies_rules_then_tops_up_with_popular_items():
    vectors = np.eye(N_ITEMS, dtype=np.float32)
    user = vectors[[0]] * 1.0 + vectors[[1]] * 0.9 + vectors[[2]] * 0.8  # prefers 0 > 1 > 2
    popularity = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    capped = rules(max_per_category=1)
    scores, ids = rec.rank_users(
        lambda q, k: exact_search(vectors, q, k),
        user,
        [np.array([], np.int64)],
        popularity,
        3,
        10,
        np.array([False]),
        capped,
    )
    # Model: 0 (category 0), then 1 and 2 are capped out; topped up with the most popular
    # items that still respect the cap: 5 (no category), 4 (category 1).
    assert ids.tolist() == [[0, 5, 4]]


def test_build_rules_from_settings(tmp_path):
    (tmp_path / "blocked.txt").write_text("i3\n\ni4\n")
    settings = make_settings(
        tmp_path,
        **{"rules.blocked_items": ["i1"], "rules.blocked_items_file": str(tmp_path / "blocked.txt"),
           "rules.max_per_category": 2},
    )  # fmt: skip
    items = pd.Index(["i1", "i2", "i3", "i4", "i5"])
    docs = pd.DataFrame({"item_id": items, "categories": [["a"], ["b", "a"], [], ["a"], None]})
    stats = pd.DataFrame({"item_id": ["i1", "i2"]})

    def read_text(location):
        return open(location).read()

    r = build_rules(settings.rules, items, stats, docs, read_text)
    assert r.blocked.tolist() == [True, False, True, True, False]
    assert r.is_new.tolist() == [False, False, True, True, True]
    assert r.category[0] == r.category[3] != r.category[1] and r.category[2] == r.category[4] == NO_CATEGORY
    (tmp_path / "blocked.txt").unlink()
    with pytest.raises(StorageError, match="rules.blocked_items_file: .*blocked.txt"):  # names the setting
        build_rules(settings.rules, items, stats, docs, read_text)


def test_a_minimum_score_above_popularity_scores_still_leaves_every_user_a_list():
    vectors = np.eye(N_ITEMS, dtype=np.float32)
    users = np.vstack([vectors[[0]] * 9.0, np.zeros((1, N_ITEMS), np.float32)])  # a model user, a new one
    popularity = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    strict = rules(min_score=5.0, new_item_boost=100.0, is_new=np.isin(np.arange(N_ITEMS), [5]))
    scores, ids = rec.rank_users(
        lambda q, k: exact_search(vectors, q, k), users, [np.array([], np.int64)] * 2, popularity, 3, 10,
        np.array([False, True]), strict,
    )  # fmt: skip
    # The model user: item 0 (9.0) passes, the rest (0.0) are dropped, and the list is topped up
    # by popularity (5 is new and boosted only as a model candidate, where it scored 0 + 100).
    assert ids[0].tolist() == [5, 0, 4] and scores[0, 0] == pytest.approx(100.0)
    # The new user: the popularity fallback, scored in [0, 1] and not held to the minimum score.
    assert ids[1].tolist() == [5, 4, 3] and scores[1].tolist() == pytest.approx([1.0, 5 / 6, 4 / 6])


def test_diversity_reorders_by_maximal_marginal_relevance():
    from recsys_lib.rules import diversify

    # Items 0 and 1 are near-duplicates; 2 is different but scores a little lower.
    vectors = np.array([[1.0, 0.0], [0.995, 0.0998], [0.0, 1.0]], dtype=np.float32)
    scores, ids = np.array([[3.0, 2.9, 2.5, -np.inf]], np.float32), np.array([[0, 1, 2, -1]])
    assert diversify(scores, ids, vectors, 0.0)[1].tolist() == [[0, 1, 2, -1]]  # relevance only
    s, i = diversify(scores, ids, vectors, 0.5)
    assert i.tolist() == [[0, 2, 1, -1]] and s[0].tolist()[:3] == pytest.approx([3.0, 2.5, 2.9])


def test_rank_users_diversifies_after_the_other_rules():
    vectors = np.eye(N_ITEMS, dtype=np.float32)
    vectors[1] = vectors[0]  # 1 duplicates 0
    user = vectors[[0]] + 0.5 * vectors[[2]]  # prefers 0 = 1 > 2
    varied = rules(diversity=0.6, vectors=vectors)
    _, ids = rec.rank_users(
        lambda q, k: exact_search(vectors, q, k), user, [np.array([], np.int64)], np.ones(N_ITEMS), 2, 10,
        np.array([False]), varied,
    )  # fmt: skip
    assert ids[0].tolist() in ([0, 2], [1, 2])  # not both duplicates

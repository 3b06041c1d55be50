"""Ranking metrics, the numpy reference, on hand-computed cases."""

import math

import pandas as pd
import pytest

from recsys_lib.evaluation.metrics import (
    catalogue_coverage,
    map_at_k,
    ndcg_at_k,
    ndcg_per_user,
    paired_interval,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
)

# Two users. User A: relevant {1, 2}; ranked [1, 5, 2]. User B: relevant {9}; ranked [7, 8].
RECS = [[1, 5, 2], [7, 8]]
RELEVANT = [{1, 2}, {9}]


def test_recall_precision():
    assert recall_at_k(RECS, RELEVANT, 3) == pytest.approx((2 / 2 + 0) / 2)
    assert recall_at_k(RECS, RELEVANT, 1) == pytest.approx((1 / 2 + 0) / 2)
    assert precision_at_k(RECS, RELEVANT, 3) == pytest.approx((2 / 3 + 0) / 2)


def test_ndcg_by_hand():
    # A: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3); B: 0.
    a = 1.5 / (1 + 1 / math.log2(3))
    assert ndcg_at_k(RECS, RELEVANT, 3) == pytest.approx(a / 2)


def test_map_by_hand():
    # A: hits at ranks 1 and 3: (1/1 + 2/3) / min(2, 3); B: 0.
    assert map_at_k(RECS, RELEVANT, 3) == pytest.approx(((1 + 2 / 3) / 2) / 2)


def test_k_larger_than_the_list():
    # k = 10 with 3 predictions: missing ranks are misses, precision divides by k.
    assert recall_at_k([[1, 2, 3]], [{3, 4}], 10) == pytest.approx(0.5)
    assert precision_at_k([[1, 2, 3]], [{3, 4}], 10) == pytest.approx(0.1)
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k([[1, 2, 3]], [{3, 4}], 10) == pytest.approx((1 / 2) / ideal)


def test_no_hits_and_users_without_relevant_items():
    assert ndcg_at_k([[1, 2]], [{3}], 2) == 0.0
    assert map_at_k([[1, 2]], [{3}], 2) == 0.0
    # A user with nothing relevant is skipped, not scored as zero.
    assert recall_at_k([[1], [2]], [{1}, set()], 1) == 1.0
    assert recall_at_k([], [], 5) == 0.0


def test_duplicate_predictions_count_once():
    # [3, 3, 4] with relevant {3, 4}: the second 3 is ignored, 4 is a hit at rank 3.
    assert recall_at_k([[3, 3, 4]], [{3, 4}], 2) == pytest.approx(0.5)
    assert precision_at_k([[3, 3, 4]], [{3, 4}], 3) == pytest.approx(2 / 3)
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k([[3, 3, 4]], [{3, 4}], 3) == pytest.approx((1 + 1 / math.log2(4)) / ideal)


def test_padding_is_ignored():
    assert recall_at_k([[-1, 2]], [{2}], 2) == 1.0
    assert catalogue_coverage([-1, 2, 2, 3], n_items=10) == pytest.approx(0.2)


def test_coverage_counts_distinct_items_in_top_k():
    assert ranking_metrics(RECS, RELEVANT, 10, [2])["coverage_at_2"] == pytest.approx(4 / 10)
    # The same function measures a published table's item column.
    assert catalogue_coverage(pd.Series(["a", "b", "a"]), n_items=4) == pytest.approx(0.5)


def test_ranking_metrics_names():
    m = ranking_metrics(RECS, RELEVANT, 10, [1, 3])
    assert set(m) == {
        f"{name}_at_{k}" for k in (1, 3) for name in ("recall", "precision", "ndcg", "map", "coverage")
    } | {"users"}
    assert m["users"] == 2


def test_per_user_ndcg_averages_to_the_metric_and_skips_users_without_relevant_items():
    per_user = ndcg_per_user(RECS + [[3]], RELEVANT + [set()], 3)
    assert len(per_user) == 2 and per_user[1] == 0.0
    assert per_user.mean() == pytest.approx(ndcg_at_k(RECS, RELEVANT, 3))


def test_paired_interval_tells_a_steady_lead_from_noise():
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 400)
    steady = paired_interval(base + 0.05, base, seed=1)  # ahead by 0.05 on every user
    assert steady == pytest.approx((0.05, 0.05, 0.05))
    noisy = paired_interval(base + rng.normal(0, 0.3, 400), base, seed=1)
    assert noisy[1] < 0 < noisy[2]  # a zero-mean difference: the interval straddles zero
    assert paired_interval(np.zeros(0), np.zeros(0), seed=1) == (0.0, 0.0, 0.0)

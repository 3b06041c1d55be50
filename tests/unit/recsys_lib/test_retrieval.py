"""The retrieval path on hand-made item vectors and an untrained tiny model (whose user tower is
the mean of the history), so every score is known: cosine / T + bias."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys_lib.retrieval import (
    Retriever,
    build_item_index,
    history_profiles,
    profile_scores,
    retrieval_items,
    retrieval_neighbours,
    retrieval_users,
)
from recsys_lib.settings import IndexSettings
from tests.conftest import hand_made_items

FLAT = IndexSettings("flat", recall_queries=10, recall_k=3, hnsw_m=16, hnsw_ef_search=64, ivf_nprobe=8)


def test_retrieval_rows_reproduce_the_model_scores(tiny_two_tower):
    model = tiny_two_tower
    g = torch.Generator().manual_seed(1)
    items = F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    bias = torch.randn(6, generator=g)
    users = F.normalize(torch.randn(3, 32, generator=g), dim=-1)
    rows = retrieval_items(items.numpy(), bias.numpy())
    with torch.no_grad():
        expected = model.score(users, items, bias).numpy()
    got = retrieval_users(users.numpy(), model.temperature.item()) @ rows.T
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Item-to-item queries ignore the bias: plain cosine similarity.
    np.testing.assert_allclose(retrieval_neighbours(items.numpy()) @ rows.T, (items @ items.T).numpy(), atol=1e-6)


def test_a_history_profile_is_the_mean_of_its_item_vectors_scored_as_a_user_vector():
    items = hand_made_items()  # a = e0, b = e1, c = (a + b) / sqrt 2, d = -a, e = e2 with bias 15
    histories = [np.array([0, 1]), np.array([3]), np.array([], np.int64)]
    profiles = history_profiles(items.vectors, histories)
    np.testing.assert_allclose(profiles[0], items.vectors[2], atol=1e-6)  # (a + b) / 2 points at c
    assert not profiles[2].any()  # no history: no profile
    scores = profile_scores(items, 0.5, histories, np.array([2, 4, 0]))
    # cosine / T + bias: c 1 / 0.5, e 0 + 15, a 0.707 / 0.5; the second user is -a.
    np.testing.assert_allclose(scores[:2], [[2.0, 15.0, np.sqrt(2)], [-np.sqrt(2), 15.0, -2.0]], atol=1e-5)


def test_an_exact_index_reports_full_recall():
    built = build_item_index(hand_made_items(), FLAT)
    assert built.kind == "flat" and built.recall == 1.0 and built.index.ntotal == 5
    assert built.manifest(hand_made_items(), FLAT) | {"build_seconds": 0} == {
        "kind": "flat", "items": 5, "dim": 33, "recall_at_3": 1.0, "build_seconds": 0,
    }  # fmt: skip


def test_users_become_queries_and_the_index_returns_the_models_ranking(tiny_two_tower):
    items = hand_made_items()
    retriever = Retriever(tiny_two_tower, items, build_item_index(items, FLAT).index, batch_size=1)
    queries, fallback = retriever.user_queries([np.array([0, 1]), np.array([], np.int64)])
    assert fallback.tolist() == [False, True]  # no history: no vector, the popularity fallback
    # The user is the mean of a and b: (e0 + e1) / sqrt 2, over T = 0.05, and 1 for the bias.
    expected = np.zeros(33, np.float32)
    expected[:2], expected[32] = (1 / np.sqrt(2)) / 0.05, 1.0
    np.testing.assert_allclose(queries[0], expected, rtol=1e-5)
    scores, ids = retriever.search(queries[:1], 5)
    # c: cosine 1 -> 20; e: cosine 0 + bias 15; a and b: 0.707 / T = 14.14; d: -14.14.
    assert ids[0, :2].tolist() == [2, 4] and sorted(ids[0, 2:4].tolist()) == [0, 1] and ids[0, 4] == 3
    assert scores[0, :2].tolist() == pytest.approx([20.0, 15.0], rel=1e-5)
    np.testing.assert_allclose(retriever.score_items(queries[:1], np.array([3, 2])), [[-14.1421, 20.0]], rtol=1e-4)
    # Without c and e (the evaluation's cold items): the same order, those two never returned,
    # from an exact index rebuilt over the others, or an approximate one that skips them.
    for kind in ("flat", "hnsw"):
        index = build_item_index(items, dataclasses.replace(FLAT, kind=kind)).index
        without = Retriever(tiny_two_tower, items, index, batch_size=1).without(np.array([2, 4]))
        s, ids = without.search(queries[:1], 5)
        assert sorted(ids[0, :2].tolist()) == [0, 1] and ids[0, 2] == 3 and (ids[0, 3:] == -1).all(), kind
        assert s[0, 2] == pytest.approx(-14.1421, rel=1e-4)
        _, again = without.without(np.array([0])).search(queries[:1], 5)  # and then without a too
        assert again[0, :2].tolist() == [1, 3] and (again[0, 2:] == -1).all(), kind

"""FAISS behind one module: each index kind against brute force on seeded synthetic vectors."""

import numpy as np
import pytest

from recsys_lib.index import (
    best_k,
    build_index,
    choose_kind,
    exact_search,
    index_kind,
    load_index,
    measure_recall,
    recall_at_k,
    save_index,
    search,
)
from recsys_lib.settings import IndexSettings


def index_settings(kind: str, ivf_nprobe: int = 32) -> IndexSettings:
    return IndexSettings(kind, recall_queries=100, recall_k=10, hnsw_m=32, hnsw_ef_search=128, ivf_nprobe=ivf_nprobe)


def clustered_vectors(n=4000, d=32, clusters=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    v = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_choose_kind_by_catalogue_size():
    assert choose_kind(10_000) == "flat"
    assert choose_kind(1_000_000) == "hnsw"
    assert choose_kind(50_000_000) == "ivfpq"
    assert choose_kind(10, "hnsw") == "hnsw"
    with pytest.raises(ValueError):
        choose_kind(10, "annoy")


def test_flat_index_is_exact():
    v = clustered_vectors()
    index = build_index(v, index_settings("flat"))
    assert index_kind(index) == "flat"
    assert measure_recall(index, v, k=10, n_queries=200) == 1.0


@pytest.mark.parametrize("kind, floor", [("hnsw", 0.95), ("ivfpq", 0.5)])
def test_approximate_indexes_against_brute_force(kind, floor):
    v = clustered_vectors()
    index = build_index(v, index_settings(kind, ivf_nprobe=16))
    assert index_kind(index) == kind
    recall = measure_recall(index, v, k=10, n_queries=300, seed=1)
    assert floor <= recall <= 1.0


def test_recall_at_k_by_hand():
    approx = np.array([[1, 2, 3], [4, 5, -1]])
    exact = np.array([[1, 2, 9], [4, 6, 7]])
    assert recall_at_k(approx, exact) == pytest.approx(3 / 6)


def test_search_caps_k_at_catalogue_size_and_roundtrips(tmp_path):
    v = clustered_vectors(n=5)
    index = build_index(v, index_settings("flat"))
    scores, ids = search(index, v[:1], k=50)
    assert ids.shape == (1, 5) and ids[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0)
    save_index(index, str(tmp_path / "i.faiss"))
    again = load_index(str(tmp_path / "i.faiss"))
    assert np.array_equal(search(again, v, 3)[1], exact_search(v, v, 3)[1])


@pytest.mark.parametrize("kind, floor", [("flat", 1.0), ("hnsw", 0.95), ("ivfpq", 0.5)])
def test_banned_rows_are_never_returned_and_the_rest_searched_as_before(kind, floor):
    v = clustered_vectors()
    banned = np.arange(0, len(v), 3)  # a third of the catalogue
    index = build_index(v, index_settings(kind, ivf_nprobe=16))
    queries = v[np.random.default_rng(2).choice(len(v), 200, replace=False)]
    _, ids = search(index, queries, 10, banned)
    assert not np.isin(ids, banned).any()
    allowed = np.setdiff1d(np.arange(len(v)), banned)
    exact = allowed[exact_search(v[allowed], queries, 10)[1]]  # brute force over the others
    assert floor <= recall_at_k(ids, exact) <= 1.0


def test_best_k_is_a_stable_sorts_head_in_any_memory_layout():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, (80, 300)).astype(np.float32)  # many ties, at the k-th place too
    scores[3, :] = -np.inf  # nothing to pick: -inf comes back
    scores[4, 10:] = -np.inf
    stable = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    for layout in (scores, np.asfortranarray(scores), scores.astype(np.float64)):
        values, columns = best_k(layout, 20)
        np.testing.assert_array_equal(columns, stable)
        np.testing.assert_array_equal(values, np.take_along_axis(scores, stable, axis=1))
    shared = np.broadcast_to(scores[0], (4, 300))  # one row for every user (most-popular): read-only
    np.testing.assert_array_equal(best_k(shared, 5)[1], np.broadcast_to(stable[0, :5], (4, 5)))
    assert best_k(scores[:, :7], 20)[1].shape == (80, 7)  # fewer columns than k

"""FAISS behind one small module: choose, build, save, load, search, and measure recall.

Rows are scored by inner product (the recommender's rows are [unit vector, item bias], see
``recsys_lib.retrieval``). The index kind follows the catalogue size unless ``index.kind`` sets
it: exact (flat) up to 200k items, HNSW up to 5M, IVF-PQ beyond, and ``recall_at_k`` measures
what the approximation costs against exact search. ``best_k`` is the exact top-k of score rows
computed elsewhere (baselines, the words model, the protocols).
Tests: tests/unit/recsys_lib/test_index.py (seeded synthetic vectors vs brute force).
"""

from __future__ import annotations

import math
import typing

import numpy as np

from recsys_lib.settings import IndexKind, IndexSettings

KINDS = tuple(k for k in typing.get_args(IndexKind) if k != "auto")
FLAT_MAX_ITEMS = 200_000
HNSW_MAX_ITEMS = 5_000_000


def choose_kind(n_items: int, kind: str = "auto") -> str:
    if kind != "auto":
        if kind not in KINDS:
            raise ValueError(f"index.kind must be auto or one of {KINDS}, got {kind!r}")
        return kind
    if n_items <= FLAT_MAX_ITEMS:
        return "flat"
    return "hnsw" if n_items <= HNSW_MAX_ITEMS else "ivfpq"


def build_index(vectors: np.ndarray, cfg: IndexSettings, seed: int = 0):
    """An inner-product index over ``vectors`` [n, d] float32; row i is id i.

    ``cfg`` (the ``[index]`` settings) gives the kind and its search parameters.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    kind = choose_kind(n, cfg.kind)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * cfg.hnsw_m)
        index.hnsw.efSearch = cfg.hnsw_ef_search
    else:
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        sub = next(m for m in (d // 4, d // 8, d // 2, d, 1) if m >= 1 and d % m == 0)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(quantizer, d, nlist, sub, 8, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, size=min(n, max(nlist * 39, 10_000)), replace=False)]
        index.train(sample)
        index.nprobe = min(cfg.ivf_nprobe, nlist)
    index.add(vectors)
    return index


def index_kind(index) -> str:
    import faiss

    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivfpq"
    return "flat"


def search(index, queries: np.ndarray, k: int, banned: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [q, k], ids [q, k]); ids are -1 where fewer than k items exist. ``banned`` ids are
    never returned: FAISS skips them inside the search (an ID selector), where excluding the
    same thousands of items from every user's list afterwards would widen each search by as many.
    On an exact index the selector turns the BLAS search into a scalar loop (5x slower at d=385):
    ``Retriever.without`` builds a ``flat_index`` over the other rows there instead."""
    import faiss

    k = max(1, min(k, index.ntotal))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if banned is None or not len(banned):
        return index.search(queries, k)
    batch = faiss.IDSelectorBatch(np.ascontiguousarray(banned, dtype=np.int64))
    selector = faiss.IDSelectorNot(batch)  # holds a raw pointer to ``batch``: both live until the search ends
    kind = index_kind(index)
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    elif kind == "ivfpq":
        params = faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
    else:
        params = faiss.SearchParameters(sel=selector)
    return index.search(queries, k, params=params)


def flat_index(vectors: np.ndarray):
    """An exact inner-product index over ``vectors`` [n, d]; row i is id i."""
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product, the reference the indexes are measured against."""
    return search(flat_index(vectors), queries, k)


def best_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [r, k], column indices [r, k]) of the ``k`` best of each row of dense ``scores``,
    best first, equal scores in column order: exactly a stable sort's first k (no NaN: -inf for
    what must not be picked). ``torch.topk`` finds them, 8x faster than numpy's argpartition on
    rows of 100k items (which took most of the evaluate stage's time at that size); the rows
    whose k-th score ties with one left out are then settled by column. Any memory layout."""
    import torch

    scores = np.require(scores, np.float32, ["W"])
    k = min(k, scores.shape[1])
    values, columns = (t.numpy() for t in torch.topk(torch.from_numpy(scores), k, dim=1))
    if not k or not len(scores):
        return values, columns
    kth = values[:, -1:]
    tied = np.flatnonzero((scores >= kth).sum(axis=1) > k)
    if len(tied):
        rows, kth = scores[tied], kth[tied]
        above, equal = rows > kth, rows == kth
        chosen = above | (equal & (np.cumsum(equal, axis=1) <= k - above.sum(axis=1, keepdims=True)))
        columns[tied] = np.nonzero(chosen)[1].reshape(len(tied), k)
        values[tied] = np.take_along_axis(rows, columns[tied], axis=1)
    order = np.lexsort((columns, -values), axis=1)
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(columns, order, axis=1)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of the exact top-k neighbours the approximate search also returned."""
    if exact_ids.size == 0:
        return 1.0
    hits = sum(len(set(a[a >= 0]) & set(e[e >= 0])) for a, e in zip(approx_ids, exact_ids))
    total = int((exact_ids >= 0).sum())
    return hits / total if total else 1.0


def measure_recall(
    index, vectors: np.ndarray, k: int, n_queries: int, seed: int = 0, queries: np.ndarray | None = None
) -> float:
    """recall@k of ``index`` (over ``vectors``) against exact search, on sampled query rows.

    ``queries`` defaults to the indexed rows themselves (item-to-item lookups).
    """
    if len(vectors) == 0:
        return 1.0
    queries = vectors if queries is None else queries
    rng = np.random.default_rng(seed)
    queries = queries[rng.choice(len(queries), size=min(n_queries, len(queries)), replace=False)]
    _, approx = search(index, queries, k)
    _, exact = exact_search(vectors, queries, k)
    return recall_at_k(approx, exact)


def save_index(index, path: str) -> None:
    import faiss

    faiss.write_index(index, path)


def load_index(path: str):
    import faiss

    return faiss.read_index(path)

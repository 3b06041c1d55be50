"""Ranking rules for the top-N tables, in numpy: seen-item exclusion, popularity fallback for
users without history, item-to-item neighbours. Catalogue items are addressed by their row
index in the embeddings table; -1 pads a row that has fewer than N items.

Tests: tests/unit/test_recommend.py (hand-written vectors, exact expected rankings).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from recsys_lib.schema import (
    DS_COL,
    ITEM_COL,
    ITEM_SIMILAR_SCHEMA,
    MODEL_VERSION_COL,
    RANK_COL,
    SCORE_COL,
    SIMILAR_ITEM_COL,
    USER_COL,
    USER_TOPN_SCHEMA,
)

# (queries [q, d], k) -> (scores [q, k], ids [q, k])
Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def exclude_and_truncate(
    scores: np.ndarray, ids: np.ndarray, exclude: list[np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop excluded and padding ids from each row, keep the first ``n`` in order.

    Args:
        scores, ids: [q, k] candidates best first.
        exclude: per row, the catalogue indices that must not appear.
    Returns:
        ([q, n] scores, [q, n] ids) with -1 / -inf padding where a row ran out of candidates.
    """
    q = ids.shape[0]
    row_of = np.repeat(np.arange(q), [len(e) for e in exclude])
    excluded = np.concatenate(exclude).astype(np.int64) if q and sum(map(len, exclude)) else np.empty(0, np.int64)
    width = np.int64(max(int(ids.max(initial=0)), int(excluded.max(initial=0))) + 1)
    banned = row_of.astype(np.int64) * width + excluded
    candidate = np.arange(q, dtype=np.int64)[:, None] * width + ids
    keep = (ids >= 0) & ~np.isin(candidate, banned)
    keep &= np.cumsum(keep, axis=1) <= n
    order = np.argsort(~keep, axis=1, kind="stable")[:, :n]
    out_ids = np.take_along_axis(np.where(keep, ids, -1), order, axis=1)
    out_scores = np.take_along_axis(np.where(keep, scores, -np.inf), order, axis=1)
    if out_ids.shape[1] < n:
        pad = n - out_ids.shape[1]
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return out_scores.astype(np.float32), out_ids


def top_n(
    searcher: Searcher, user_vectors: np.ndarray, seen: list[np.ndarray], n: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` unseen items per user: ask the index for n + |seen| and filter.

    Callers batch users with similar |seen| together (see ``batches_by_seen``) so one heavy user
    does not widen the search for everyone.
    """
    if len(user_vectors) == 0:
        return np.empty((0, n), np.float32), np.empty((0, n), np.int64)
    k = min(n_items, n + max(len(s) for s in seen))
    scores, ids = searcher(user_vectors, k)
    return exclude_and_truncate(scores, ids, seen, n)


def popular_unseen(popularity: np.ndarray, seen: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fallback: most popular items each user has not seen, scored popularity / max.

    Args:
        popularity: [n_items] counts (e.g. distinct users per item).
    """
    order = np.argsort(-popularity, kind="stable")
    k = min(len(order), n + max((len(s) for s in seen), default=0))
    top = np.broadcast_to(order[:k], (len(seen), k))
    peak = popularity.max() if len(popularity) and popularity.max() > 0 else 1.0
    scores = np.broadcast_to((popularity[order[:k]] / peak).astype(np.float32), (len(seen), k))
    return exclude_and_truncate(np.array(scores), np.array(top), seen, n)


def similar_items(searcher: Searcher, item_vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` neighbours of every item, itself excluded."""
    if len(item_vectors) == 0:
        return np.empty((0, n), np.float32), np.empty((0, n), np.int64)
    scores, ids = searcher(item_vectors, min(len(item_vectors), n + 1))
    itself = [np.array([i]) for i in range(len(item_vectors))]
    return exclude_and_truncate(scores, ids, itself, n)


def batches_by_seen(seen_counts: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of users with similar numbers of seen items."""
    order = np.argsort(seen_counts, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def ranked_rows(
    keys: np.ndarray, ids: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flatten [q, n] results to long rows (key, rank 1.., id, score), dropping padding."""
    mask = ids >= 0
    ranks = np.cumsum(mask, axis=1)
    rows, _ = np.nonzero(mask)
    return keys[rows], ranks[mask].astype(np.int32), ids[mask], scores[mask].astype(np.float32)


def user_topn_table(user_ids, ranks, item_ids, scores, model_version: str, ds: str) -> pa.Table:
    n = len(user_ids)
    return pa.table(
        {
            USER_COL: pa.array(user_ids, pa.string()),
            RANK_COL: pa.array(ranks, pa.int32()),
            ITEM_COL: pa.array(item_ids, pa.string()),
            SCORE_COL: pa.array(scores, pa.float32()),
            MODEL_VERSION_COL: pa.array([model_version] * n, pa.string()),
            DS_COL: pa.array([ds] * n, pa.string()),
        },
        schema=USER_TOPN_SCHEMA,
    )


def item_similar_table(item_ids, ranks, similar_ids, scores, model_version: str, ds: str) -> pa.Table:
    n = len(item_ids)
    return pa.table(
        {
            ITEM_COL: pa.array(item_ids, pa.string()),
            RANK_COL: pa.array(ranks, pa.int32()),
            SIMILAR_ITEM_COL: pa.array(similar_ids, pa.string()),
            SCORE_COL: pa.array(scores, pa.float32()),
            MODEL_VERSION_COL: pa.array([model_version] * n, pa.string()),
            DS_COL: pa.array([ds] * n, pa.string()),
        },
        schema=ITEM_SIMILAR_SCHEMA,
    )


def rank_users(
    searcher: Searcher,
    user_vectors: np.ndarray,
    seen: list[np.ndarray],
    popularity: np.ndarray,
    n: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``n`` per user: the model for users with a vector, popularity for the rest.

    Args:
        user_vectors: [u, d]; an all-zero row means "no usable history" (fallback).
        seen: per user, catalogue indices to exclude.
        popularity: [n_items] counts for the fallback.
    Returns:
        (scores [u, n], ids [u, n], fallback [u] bool).
    """
    n_users = len(user_vectors)
    scores = np.full((n_users, n), -np.inf, dtype=np.float32)
    ids = np.full((n_users, n), -1, dtype=np.int64)
    fallback = ~(np.abs(user_vectors) > 0).any(axis=1) if n_users else np.zeros(0, bool)
    seen_counts = np.fromiter((len(s) for s in seen), dtype=np.int64, count=n_users)
    warm = np.flatnonzero(~fallback)
    for batch in batches_by_seen(seen_counts[warm], batch_size):
        rows = warm[batch]
        s, i = top_n(searcher, user_vectors[rows], [seen[r] for r in rows], n, len(popularity))
        scores[rows], ids[rows] = s, i
    cold = np.flatnonzero(fallback)
    for start in range(0, len(cold), batch_size):
        rows = cold[start : start + batch_size]
        s, i = popular_unseen(popularity, [seen[r] for r in rows], n)
        scores[rows], ids[rows] = s, i
    return scores, ids, fallback

"""Ranking metrics, plain numpy: the reference every other implementation must agree with.

Conventions (as in Microsoft Recommenders' python_evaluation): binary relevance; users without
relevant items are skipped; a prediction repeated within a list counts once, at its first rank;
lists shorter than k are fine (missing ranks are misses).
  recall@k    = hits in top k / |relevant|
  precision@k = hits in top k / k
  ndcg@k      = DCG@k / ideal DCG@k, gain 1 / log2(rank + 1)
  map@k       = sum over hits of precision at that rank / min(|relevant|, k)
  coverage@k  = distinct items in all top-k lists / catalogue size
Tests: tests/unit/recsys_lib/evaluation/test_metrics.py (hand-computed cases).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from recsys_lib.index import best_k

PAD = -1


def _hits(recommended: Sequence[Sequence[int]], relevant: Sequence[Iterable[int]], k: int):
    """[u, k] hit matrix and |relevant| per user, for users with at least one relevant item."""
    rows, sizes = [], []
    for recs, rel in zip(recommended, relevant):
        rel = set(rel)
        if not rel:
            continue
        seen: set[int] = set()
        row = np.zeros(k, dtype=bool)
        for rank, item in enumerate(list(recs)[:k]):
            if item == PAD or item in seen:
                continue
            seen.add(item)
            row[rank] = item in rel
        rows.append(row)
        sizes.append(len(rel))
    if not rows:
        return np.zeros((0, k), dtype=bool), np.zeros(0)
    return np.vstack(rows), np.asarray(sizes, dtype=np.float64)


def recall_at_k(recommended, relevant, k: int) -> float:
    hits, sizes = _hits(recommended, relevant, k)
    return float((hits.sum(1) / sizes).mean()) if len(sizes) else 0.0


def precision_at_k(recommended, relevant, k: int) -> float:
    hits, sizes = _hits(recommended, relevant, k)
    return float((hits.sum(1) / k).mean()) if len(sizes) else 0.0


def ndcg_at_k(recommended, relevant, k: int) -> float:
    per_user = ndcg_per_user(recommended, relevant, k)
    return float(per_user.mean()) if len(per_user) else 0.0


def ndcg_per_user(recommended, relevant, k: int) -> np.ndarray:
    """NDCG@k of each user with at least one relevant item, in order."""
    hits, sizes = _hits(recommended, relevant, k)
    if not len(sizes):
        return np.zeros(0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(1)
    ideal = np.array([discounts[: int(min(s, k))].sum() for s in sizes])
    return dcg / ideal


def paired_interval(a: np.ndarray, b: np.ndarray, seed: int, resamples: int = 2000) -> tuple[float, float, float]:
    """(mean of a - b, and its 95% interval) by a paired bootstrap over users: how far apart two
    rankers scored on the same users really are (on 100 users a gap of 0.01 is often noise)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not len(diff):
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(diff.mean()), float(low), float(high)


def map_at_k(recommended, relevant, k: int) -> float:
    hits, sizes = _hits(recommended, relevant, k)
    if not len(sizes):
        return 0.0
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return float(((precision_at_rank * hits).sum(1) / np.minimum(sizes, k)).mean())


def catalogue_coverage(recommended: Iterable, n_items: int) -> float:
    """Share of a catalogue of ``n_items`` recommended at least once (padding ignored).

    Args:
        recommended: every recommended id, e.g. the top-k entries of all lists, or the item
            column of a published top-N table.
    """
    ids = pd.Series(recommended if hasattr(recommended, "__len__") else list(recommended), dtype=object)
    return int(ids[ids != PAD].nunique()) / n_items if n_items else 0.0


def ranking_metrics(recommended, relevant, n_items: int, ks: Sequence[int]) -> dict[str, float]:
    """Every metric at every k, named ``<metric>_at_<k>``, plus the number of users scored."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall_at_{k}"] = recall_at_k(recommended, relevant, k)
        out[f"precision_at_{k}"] = precision_at_k(recommended, relevant, k)
        out[f"ndcg_at_{k}"] = ndcg_at_k(recommended, relevant, k)
        out[f"map_at_{k}"] = map_at_k(recommended, relevant, k)
        out[f"coverage_at_{k}"] = catalogue_coverage((i for recs in recommended for i in list(recs)[:k]), n_items)
    out["users"] = float(sum(1 for rel in relevant if len(set(rel))))
    return out


def segment(lists, relevant, mask) -> tuple[list, list]:
    """The rows of ``lists``/``relevant`` where ``mask`` is true."""
    return [lst for lst, m in zip(lists, mask) if m], [r for r, m in zip(relevant, mask) if m]


def cold_item_slice(user_scores: np.ndarray, cold_relevant: Sequence[Iterable[int]], k: int) -> dict[str, float]:
    """Recall@k and NDCG@k when each user ranks only the cold items.

    Args:
        user_scores: [u, n_cold] scores of each user against every cold item.
        cold_relevant: per user, positions (0..n_cold-1) of the cold items they interacted with.
    """
    _, order = best_k(user_scores, k)
    return {f"recall_at_{k}": recall_at_k(order, cold_relevant, k), f"ndcg_at_{k}": ndcg_at_k(order, cold_relevant, k)}


def share_of(lists: np.ndarray, items: set[int]) -> float:
    """Share of the (non-padding) entries of ranked lists that fall in ``items``."""
    flat = np.asarray(lists).ravel()
    flat = flat[flat != PAD]
    return float(np.isin(flat, list(items)).mean()) if len(flat) else 0.0

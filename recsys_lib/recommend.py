"""The top-N tables: ranking rules in numpy, and the tables built from a retriever.

Seen-item exclusion, popularity fallback for users without history (per segment when users have
one), business rules, item-to-item neighbours, and the reason item of each recommendation.
Catalogue items are addressed by their row index in the item vectors; -1 pads a row that has
fewer than N items. ``user_topn`` and ``item_similar`` turn a ``Retriever``'s results into the
published tables: the path the recommend stage serves and the evaluate stage measures.

Tests: tests/unit/recsys_lib/test_recommend.py (hand-written vectors, exact expected rankings;
the whole path through a tiny model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys_lib.embedding import ItemVectors, vector_column
from recsys_lib.logs import Progress
from recsys_lib.retrieval import retrieval_neighbours, retrieval_users
from recsys_lib.rules import BusinessRules, diversify
from recsys_lib.schema import (
    DS_COL,
    FROM_HISTORY,
    FROM_INTERESTS,
    FROM_POPULARITY,
    HISTORY_COL,
    INTERESTS_COL,
    ITEM_COL,
    ITEM_SIMILAR_SCHEMA,
    ITEM_VECTORS_SCHEMA,
    MODEL_VERSION_COL,
    N_USERS_COL,
    QUERY_COL,
    QUERY_TOPN_SCHEMA,
    RANK_COL,
    REASON_ITEM_COL,
    SCORE_COL,
    SEEN_COL,
    SEGMENT_COL,
    SEGMENT_USERS_COL,
    SIMILAR_ITEM_COL,
    SOURCE_COL,
    USER_COL,
    USER_TOPN_SCHEMA,
    USER_VECTORS_SCHEMA,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from recsys_lib.ranker import ServedRanking
    from recsys_lib.retrieval import Retriever
    from recsys_lib.words import WordsModel

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
    searcher: Searcher,
    user_vectors: np.ndarray,
    seen: list[np.ndarray],
    n: int,
    n_items: int,
    rules: BusinessRules | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` unseen items per user: ask the index for n (or more, when business rules may
    drop candidates) + |seen|, filter, apply the rules, cut.

    Callers batch users with similar |seen| together (see ``batches_by_seen``) so one heavy user
    does not widen the search for everyone.
    """
    if len(user_vectors) == 0:
        return np.empty((0, n), np.float32), np.empty((0, n), np.int64)
    depth = n if rules is None else rules.depth(n)
    k = min(n_items, depth + max(len(s) for s in seen))
    scores, ids = searcher(user_vectors, k)
    return finish_lists(scores, ids, seen, n, rules)


def finish_lists(scores, ids, seen, n, rules):
    """Candidates [q, k] best first -> top-``n``: seen items out, then the business rules."""
    if rules is None:
        return exclude_and_truncate(scores, ids, seen, n)
    scores, ids = exclude_and_truncate(scores, ids, seen, ids.shape[1])
    scores, ids = rules.apply(scores, ids)
    nothing = [np.empty(0, np.int64)] * len(ids)
    if rules.diversifies:  # MMR among the best depth(n) that the rules kept
        scores, ids = diversify(*exclude_and_truncate(scores, ids, nothing, rules.depth(n)), rules.vectors,
                                rules.diversity)  # fmt: skip
    return exclude_and_truncate(scores, ids, nothing, n)


def popularity_vector(item_index: pd.Index, stats: pd.DataFrame) -> np.ndarray:
    """Distinct users per catalogue item (0 for items nobody touched yet), from ``item_stats``."""
    pos = item_index.get_indexer(stats[ITEM_COL])
    out = np.zeros(len(item_index), dtype=np.float64)
    out[pos[pos >= 0]] = stats[N_USERS_COL].to_numpy()[pos >= 0]
    return out


def popular_unseen(
    popularity: np.ndarray, seen: list[np.ndarray], n: int, rules: BusinessRules | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The fallback: most popular items each user has not seen, scored popularity / max.

    Args:
        popularity: [n_items] counts (e.g. distinct users per item).
        rules: applied as ``rules.on_popularity()`` (no score rules on popularity scores).
    """
    rules = None if rules is None else rules.on_popularity()
    order = np.argsort(-popularity, kind="stable")
    depth = n if rules is None else rules.depth(n)
    k = min(len(order), depth + max((len(s) for s in seen), default=0))
    top = np.broadcast_to(order[:k], (len(seen), k))
    peak = popularity.max() if len(popularity) and popularity.max() > 0 else 1.0
    scores = np.broadcast_to((popularity[order[:k]] / peak).astype(np.float32), (len(seen), k))
    return finish_lists(np.array(scores), np.array(top), seen, n, rules)


@dataclass(frozen=True)
class SegmentPopularity:
    """Per-segment popularity for the cold-user fallback.

    Kept sparse (segment -> catalogue indices, counts); the dense vector of a segment is built
    only while its users are ranked. Global popularity, scaled below one user, breaks ties and
    ranks the items nobody of the segment has touched.
    """

    counts: dict[str, tuple[np.ndarray, np.ndarray]]
    base: np.ndarray  # [n_items] global popularity

    def __contains__(self, segment) -> bool:
        return segment in self.counts

    def vector(self, segment: str) -> np.ndarray:
        v = self.base / (self.base.max(initial=0.0) + 1.0)
        idx, n = self.counts[segment]
        v[idx] += n
        return v

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, item_index: pd.Index, base: np.ndarray, min_users: int
    ) -> "SegmentPopularity":
        """From ``segment_popularity`` feature rows (segment, item_id, n_users, segment_users);
        segments with fewer than ``min_users`` users are left to the global fallback."""
        frame = frame[frame[SEGMENT_USERS_COL] >= min_users]
        pos = item_index.get_indexer(frame[ITEM_COL])
        frame, pos = frame[pos >= 0], pos[pos >= 0]
        counts = {}
        for segment, rows in frame.groupby(SEGMENT_COL, sort=True).indices.items():
            counts[segment] = (pos[rows], frame[N_USERS_COL].to_numpy(np.float64)[rows])
        return cls(counts, np.asarray(base, np.float64))


def top_up(
    scores: np.ndarray, ids: np.ndarray, popularity: np.ndarray, seen: list[np.ndarray], rules: BusinessRules | None
) -> tuple[np.ndarray, np.ndarray]:
    """Fill rows that rules left short of N with popular items not already in the row or seen."""
    n = ids.shape[1]
    short = np.flatnonzero((ids >= 0).sum(axis=1) < n)
    if len(short) == 0:
        return scores, ids
    exclude = [np.concatenate([seen[r], ids[r][ids[r] >= 0]]).astype(np.int64) for r in short]
    fill_scores, fill_ids = popular_unseen(popularity, exclude, n, rules)
    merged_scores = np.concatenate([scores[short], fill_scores], axis=1)
    merged_ids = np.concatenate([ids[short], fill_ids], axis=1)
    scores, ids = scores.copy(), ids.copy()
    scores[short], ids[short] = exclude_and_truncate(merged_scores, merged_ids, [np.empty(0, np.int64)] * len(short), n)
    return scores, ids


def similar_items(
    searcher: Searcher, item_queries: np.ndarray, n: int, blocked: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` neighbours of every item (row i queries for item i), itself and blocked items
    excluded."""
    if len(item_queries) == 0:
        return np.empty((0, n), np.float32), np.empty((0, n), np.int64)
    n_blocked = 0 if blocked is None else int(blocked.sum())
    scores, ids = searcher(item_queries, min(len(item_queries), n + 1 + n_blocked))
    exclude = [np.array([i]) for i in range(len(item_queries))]
    if n_blocked:
        banned = np.flatnonzero(blocked)
        exclude = [np.concatenate([e, banned]) for e in exclude]
    return exclude_and_truncate(scores, ids, exclude, n)


def batches_by_seen(seen_counts: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of users with similar numbers of seen items."""
    order = np.argsort(seen_counts, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def ranked_rows(keys: np.ndarray, ids: np.ndarray, scores: np.ndarray, *aligned: np.ndarray) -> tuple[np.ndarray, ...]:
    """Flatten [q, n] results to long rows (key, rank 1.., id, score, *aligned), dropping padding.

    ``aligned``: more [q, n] arrays (e.g. reasons) flattened the same way.
    """
    mask = ids >= 0
    ranks = np.cumsum(mask, axis=1)
    rows, _ = np.nonzero(mask)
    extra = tuple(a[mask] for a in aligned)
    return (keys[rows], ranks[mask].astype(np.int32), ids[mask], scores[mask].astype(np.float32), *extra)


def explain(
    item_vectors: np.ndarray, histories: list[np.ndarray], ids: np.ndarray, batch_size: int = 1024
) -> np.ndarray:
    """For each recommended item, the history item most similar to it (cosine), as a catalogue
    index [u, n]; -1 for padding and for users without history (popularity fallback rows).

    Args:
        item_vectors: [n_items, d] unit vectors.
        histories: per user, catalogue indices of the items that may explain (their history).
        ids: [u, n] recommended catalogue indices, -1 padded.
    """
    reasons = np.full(ids.shape, -1, dtype=np.int64)
    for start in range(0, len(ids), batch_size):
        rows = histories[start : start + batch_size]
        width = max((len(h) for h in rows), default=0)
        if width == 0:
            continue
        hist = np.full((len(rows), width), -1, dtype=np.int64)
        for r, h in enumerate(rows):
            hist[r, : len(h)] = h
        recs = ids[start : start + batch_size]
        sims = np.einsum("bnd,bld->bnl", item_vectors[recs.clip(min=0)], item_vectors[hist.clip(min=0)])
        sims = np.where((hist >= 0)[:, None, :], sims, -np.inf)
        best = np.take_along_axis(hist[:, None, :], sims.argmax(axis=2)[..., None], axis=2)[..., 0]
        usable = (recs >= 0) & (hist >= 0).any(axis=1)[:, None]
        reasons[start : start + batch_size] = np.where(usable, best, -1)
    return reasons


def user_topn_table(
    user_ids, ranks, item_ids, scores, model_version: str, ds: str, reason_ids=None, sources=None
) -> pa.Table:
    """The published user top-N table; ``reason_ids`` holds item ids or None (fallback rows),
    ``sources`` what each row was ranked from (default: the user's history)."""
    n = len(user_ids)
    return pa.table(
        {
            USER_COL: pa.array(user_ids, pa.string()),
            RANK_COL: pa.array(ranks, pa.int32()),
            ITEM_COL: pa.array(item_ids, pa.string()),
            SCORE_COL: pa.array(scores, pa.float32()),
            MODEL_VERSION_COL: pa.array([model_version] * n, pa.string()),
            DS_COL: pa.array([ds] * n, pa.string()),
            REASON_ITEM_COL: pa.array([None] * n if reason_ids is None else reason_ids, pa.string()),
            SOURCE_COL: pa.array([FROM_HISTORY] * n if sources is None else sources, pa.string()),
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
    user_queries: np.ndarray,
    seen: list[np.ndarray],
    popularity: np.ndarray,
    n: int,
    batch_size: int,
    fallback: np.ndarray,
    rules: BusinessRules | None = None,
    segments: np.ndarray | None = None,
    segment_popularity: SegmentPopularity | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` per user: the model for most users, popularity for the ``fallback`` ones.

    Args:
        user_queries: [u, d] index queries.
        seen: per user, catalogue indices to exclude.
        popularity: [n_items] counts for the fallback (and for topping up rows that business
            rules left short).
        fallback: [u] bool, True for users without a usable history.
        rules: business rules applied to every list before it is cut to ``n``.
        segments: [u] each user's segment (None where unknown); fallback users of a segment in
            ``segment_popularity`` get their segment's popular items, the others global ones.
    Returns:
        (scores [u, n], ids [u, n]).
    """
    n_users = len(user_queries)
    scores = np.full((n_users, n), -np.inf, dtype=np.float32)
    ids = np.full((n_users, n), -1, dtype=np.int64)
    seen_counts = np.fromiter((len(s) for s in seen), dtype=np.int64, count=n_users)
    warm = np.flatnonzero(~fallback)
    progress = Progress(log, "rank users", len(warm), "users")
    for batch in batches_by_seen(seen_counts[warm], batch_size):
        rows = warm[batch]
        batch_seen = [seen[r] for r in rows]
        s, i = top_n(searcher, user_queries[rows], batch_seen, n, len(popularity), rules)
        if rules is not None and rules.drops_candidates:
            s, i = top_up(s, i, popularity, batch_seen, rules)
        scores[rows], ids[rows] = s, i
        progress.advance(len(rows))
    for group, counts in _fallback_groups(np.flatnonzero(fallback), popularity, segments, segment_popularity):
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            scores[rows], ids[rows] = popular_unseen(counts, [seen[r] for r in rows], n, rules)
    return scores, ids


def _fallback_groups(rows, popularity, segments, segment_popularity):
    """(fallback rows, the popularity they are ranked by): one group per known segment, lazily."""
    if segments is None or segment_popularity is None or not segment_popularity.counts:
        yield rows, popularity
        return
    keys = np.asarray(segments, dtype=object)[rows]
    known = np.fromiter((k in segment_popularity for k in keys), dtype=bool, count=len(rows))
    yield rows[~known], popularity
    for segment in sorted(set(keys[known])):
        yield rows[keys == segment], segment_popularity.vector(segment)


@dataclass(frozen=True)
class UserTopN:
    """One part of the users' output tables, and what ranking it counted."""

    table: pa.Table  # USER_TOPN_SCHEMA
    vectors: pa.Table  # USER_VECTORS_SCHEMA: users with a vector (not the popularity fallback)
    counts: dict[str, int]  # users, interests_users, fallback_users, segment_fallback_users, user_rows


def user_topn(
    retriever: Retriever,
    histories: pd.DataFrame,
    popularity: np.ndarray,
    n: int,
    model_version: str,
    ds: str,
    rules: BusinessRules | None = None,
    segment_popularity: SegmentPopularity | None = None,
    ranking: ServedRanking | None = None,
    words: WordsModel | None = None,
) -> UserTopN:
    """The user top-N table of ``histories`` (user_id, history, seen [, segment] [, interests]
    rows): the model's retrieval (re-ordered by ``ranking``'s ranker when given) for users with a
    history; for users without one who said what they like (``interests``), what the reference
    users whose words are alike used (``words``); the (segment's) popularity fallback for the
    others. Seen items are excluded, business rules applied last, each row explained by a history
    item and marked with its ``source``; and the user vectors it ranked with (users with a
    history). ``words`` None: users without history get the fallback whatever they said (train
    found their words lose to popularity).
    """
    items = retriever.items
    history_idx = items.indices(histories[HISTORY_COL])
    seen_idx = items.indices(histories[SEEN_COL])
    segments = histories[SEGMENT_COL].to_numpy(dtype=object) if SEGMENT_COL in histories else None
    user_vectors, fallback = retriever.user_vectors(history_idx)
    said = np.zeros(len(fallback), dtype=bool)
    if words is not None and INTERESTS_COL in histories and retriever.tokenizer is not None:
        said = fallback & histories[INTERESTS_COL].notna().to_numpy()
        fallback = fallback & ~said
    source = np.where(fallback, FROM_POPULARITY, np.where(said, FROM_INTERESTS, FROM_HISTORY)).astype(object)
    queries = retrieval_users(user_vectors, retriever.temperature)
    # With a ranker, users with a history are re-ranked; the others go through rank_users.
    ranked_here = fallback if ranking is not None else ~said
    rows_here = np.flatnonzero(ranked_here)
    scores = np.full((len(fallback), n), -np.inf, dtype=np.float32)
    ids = np.full((len(fallback), n), -1, dtype=np.int64)
    scores[rows_here], ids[rows_here] = rank_users(
        retriever.search, queries[rows_here], [seen_idx[r] for r in rows_here], popularity, n, retriever.batch_size,
        fallback[rows_here], rules, segments=None if segments is None else segments[rows_here],
        segment_popularity=segment_popularity,
    )  # fmt: skip
    if said.any():
        rows = np.flatnonzero(said)
        queries_said = words.queries(retriever.words_vectors(histories[INTERESTS_COL].to_numpy()[said].tolist()))
        scores[rows], ids[rows] = rank_users(words.search, queries_said, [seen_idx[r] for r in rows], popularity, n,
                                             retriever.batch_size, np.zeros(len(rows), dtype=bool), rules)  # fmt: skip
    if ranking is not None and (~fallback & ~said).any():
        warm = np.flatnonzero(~fallback & ~said)
        scores[warm], ids[warm] = ranking.rerank_users(
            retriever, [history_idx[r] for r in warm], [seen_idx[r] for r in warm], n, rules, popularity
        )
    reasons = explain(items.vectors, history_idx, ids)
    sources = np.broadcast_to(source[:, None], ids.shape)
    users, ranks, rows, row_scores, why, row_sources = ranked_rows(histories[USER_COL].to_numpy(), ids, scores,
                                                                   reasons, sources)  # fmt: skip
    catalogue = items.ids.to_numpy()
    reason_ids = np.where(why >= 0, catalogue[why.clip(min=0)], None)
    table = user_topn_table(users, ranks, catalogue[rows], row_scores, model_version, ds, reason_ids, row_sources)
    by_segment = 0
    if segments is not None and segment_popularity is not None:
        by_segment = sum(segment in segment_popularity for segment in segments[fallback])
    counts = {
        "users": len(histories),
        "interests_users": int(said.sum()),
        "fallback_users": int(fallback.sum()),
        "segment_fallback_users": int(by_segment),
        "user_rows": table.num_rows,
    }
    user_ids = histories[USER_COL].to_numpy()
    # Published as the model's queries (user / T), so a service scores dot(user, item) + bias.
    vectors = user_vectors_table(user_ids[~fallback & ~said], queries[~fallback & ~said, :-1], model_version)
    return UserTopN(table, vectors, counts)


def item_vectors_table(items: ItemVectors, model_version: str) -> pa.Table:
    """The published item vectors: every catalogue item, as served (text + ID for warm items)."""
    return pa.table(
        [pa.array(items.ids, pa.string()), vector_column(items.vectors), pa.array(items.bias, pa.float32()),
         pa.array([model_version] * len(items), pa.string())],
        schema=ITEM_VECTORS_SCHEMA,
    )  # fmt: skip


def user_vectors_table(user_ids, vectors: np.ndarray, model_version: str) -> pa.Table:
    versions = pa.array([model_version] * len(user_ids), pa.string())
    return pa.table([pa.array(user_ids, pa.string()), vector_column(vectors), versions], schema=USER_VECTORS_SCHEMA)


def item_similar(
    retriever: Retriever, n: int, model_version: str, ds: str, blocked: np.ndarray | None = None
) -> pa.Table:
    """The item-to-item table: every catalogue item's ``n`` nearest items by cosine similarity."""
    scores, ids = similar_items(retriever.search, retriever.neighbour_queries(), n, blocked)
    catalogue = retriever.items.ids.to_numpy()
    items, ranks, similar, similar_scores = ranked_rows(catalogue, ids, scores)
    return item_similar_table(items, ranks, catalogue[similar], similar_scores, model_version, ds)


def query_topn(
    retriever: Retriever, queries: list[str], n: int, model_version: str, ds: str, blocked: np.ndarray | None = None
) -> pa.Table:
    """The frequent-query table: each query's ``n`` best items as search ranks them (cosine of
    the query's text vector and the item vectors, ``PublishedTables.search`` without a user),
    blocked items excluded."""
    if not queries:
        return query_topn_table([], [], [], [], model_version, ds)
    vectors = retriever.text_vectors(queries)
    n_items = len(retriever.items)
    banned = np.flatnonzero(blocked) if blocked is not None else np.empty(0, np.int64)
    scores, ids = retriever.search(retrieval_neighbours(vectors), min(n_items, n + len(banned)))
    scores, ids = exclude_and_truncate(scores, ids, [banned] * len(queries), n)
    keys, ranks, rows, row_scores = ranked_rows(np.asarray(queries, dtype=object), ids, scores)
    return query_topn_table(keys, ranks, retriever.items.ids.to_numpy()[rows], row_scores, model_version, ds)


def query_topn_table(queries, ranks, item_ids, scores, model_version: str, ds: str) -> pa.Table:
    n = len(queries)
    return pa.table(
        {
            QUERY_COL: pa.array(queries, pa.string()),
            RANK_COL: pa.array(ranks, pa.int32()),
            ITEM_COL: pa.array(item_ids, pa.string()),
            SCORE_COL: pa.array(scores, pa.float32()),
            MODEL_VERSION_COL: pa.array([model_version] * n, pa.string()),
            DS_COL: pa.array([ds] * n, pa.string()),
        },
        schema=QUERY_TOPN_SCHEMA,
    )

"""Protocols for words: held-out tags as search queries, and users known only by what they say.

Search: held-out tags are the queries, the items that carry them the answers.
The features stage holds out a seeded share of the distinct tags whole
(``features.search_holdout_fraction``): they are left out of the evaluation model's documents
and of its search training pairs, so no ranker here has seen a query next to its answers. Each
held-out tag is a query; its relevant items are every catalogue item that carried it. The model
ranks by its query path (the item tower's text vector of the query) against its item vectors;
BM25 (``bm25s``) and the pretrained encoder (mean-pooled, cosine) rank the same evaluation
documents; most-popular is the floor.

Users described in words: each warm user's history is hidden and replaced by the words that
describe it best (the tags and categories of their training items, weighted by TF-IDF, the
training pairs only: no held-out tag and no held-out item is among them); the model ranks from
those words through the path a new user with stated interests takes at serving time (a
``WordsModel``: what the reference users whose own words are alike used, fitted without the
scored users); most-popular is what such a user gets otherwise.
Tests: tests/unit/recsys_lib/evaluation/test_search.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from recsys_lib import baselines as bl
from recsys_lib.evaluation.metrics import PAD, ranking_metrics
from recsys_lib.evaluation.report import MODEL, Segment
from recsys_lib.index import best_k
from recsys_lib.models.examples import interest_texts
from recsys_lib.sampling import stable_sample
from recsys_lib.schema import HOLDOUT_COL, ITEM_COL, QUERY_COL
from recsys_lib.words import DEFAULT_WORDS_L2, WORDS_L2, fold_scores, reference_users

log = logging.getLogger(__name__)

MIN_QUERIES = 5  # fewer held-out tags than this: no search evaluation (the numbers would be noise)
MIN_INTEREST_USERS = 50  # fewer validation users with words than this: the text path is not used
# Validation users whose words the check encodes at most (a seeded sample): enough to tell the priors
# and popularity apart (NDCG@10's standard error about 0.003), 20 s of MiniLM on 2 cores.
MAX_INTEREST_USERS = 5_000

# A scorer maps query texts to scores [n_queries, n_items] over the catalogue; -inf: not retrieved.
Scorer = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class SearchQueries:
    """Held-out tags and the catalogue indices of the items that carry each."""

    texts: list[str]
    relevant: list[set[int]]

    @classmethod
    def from_pairs(cls, pairs: pd.DataFrame, item_ids: pd.Index) -> "SearchQueries":
        held = pairs[pairs[HOLDOUT_COL]]
        held = held.assign(_row=item_ids.get_indexer(held[ITEM_COL]))
        held = held[held["_row"] >= 0]
        grouped = held.groupby(QUERY_COL, sort=True)["_row"].agg(lambda rows: set(int(r) for r in rows))
        return cls(grouped.index.tolist(), grouped.tolist())

    def __len__(self) -> int:
        return len(self.texts)


def bm25_scorer(documents: Sequence[str]) -> Scorer:
    """BM25 (bm25s, English stop words, its default k1 and b) over the documents; a document
    sharing no word with the query is not retrieved (rather than listed in catalogue order)."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(documents), stopwords="en", show_progress=False), show_progress=False)

    def score(queries: list[str]) -> np.ndarray:
        tokens = bm25s.tokenize(queries, stopwords="en", show_progress=False, return_ids=False)
        scores = np.stack([retriever.get_scores(t) if t else np.zeros(len(documents)) for t in tokens])
        return np.where(scores > 0, scores, -np.inf)

    return score


def vector_scorer(encode: Callable[[list[str]], np.ndarray], item_vectors: np.ndarray) -> Scorer:
    """Inner products of encoded queries with item vectors."""
    return lambda queries: encode(queries) @ item_vectors.T


def search_segment(queries: SearchQueries, scorers: dict[str, Scorer], n_items: int, ks: Sequence[int]) -> Segment:
    """Every scorer's ranking metrics on the held-out tag queries (the whole catalogue ranked)."""
    title = f"search, held-out tags as queries (n={len(queries)})"
    if len(queries) < MIN_QUERIES:
        note = f"{len(queries)} held-out tags: too few for this protocol (features.search_holdout_fraction)"
        return Segment(title, len(queries), {}, note)
    depth = min(max(ks), n_items)
    results = {}
    for name, scorer in scorers.items():
        scores = scorer(queries.texts)
        best, lists = best_k(scores, depth)
        lists[~np.isfinite(best)] = PAD
        results[name] = ranking_metrics(lists, queries.relevant, n_items, ks)
    log.info("search: %s", {n: round(m[f"ndcg_at_{ks[0]}"], 4) for n, m in results.items()})
    return Segment(title, len(queries), dict(sorted(results.items(), key=lambda kv: kv[0] != MODEL)))


def text_user_segment(split, candidate, pairs: pd.DataFrame, ks: Sequence[int], l2: float = DEFAULT_WORDS_L2,
                      seed: int = 0) -> Segment:  # fmt: skip
    """Warm users ranked from ``interest_texts`` of their training history (the history itself
    hidden) through the served path for users known by their words (a ``WordsModel`` with the
    ``l2`` train chose, fitted on the other users: five folds, none learns from its own scored
    users) against most-popular, on the warm protocol's answers (cold items excluded). At most
    ``MAX_INTEREST_USERS`` of them (a ``stable_sample`` by user id): their words go through the
    transformer (and its cache: the sample stays the same from night to night)."""
    from recsys_lib.evaluation.protocols import WarmUsers
    from recsys_lib.recommend import rank_users

    warm = WarmUsers.of(split)
    texts = interest_texts([split.history_idx[i] for i in warm.rows], pairs, split.item_ids)
    said = np.array([bool(t) for t in texts], dtype=bool)
    title = f"users described in words, history hidden (n={int(said.sum())})"
    if said.sum() < MIN_QUERIES or candidate.tokenizer is None:
        return Segment(title, int(said.sum()), {}, "too few users whose history has tags or categories")
    rows = np.flatnonzero(said)
    if len(rows) > MAX_INTEREST_USERS:
        rows = rows[stable_sample(split.users[np.asarray(warm.rows)[rows]], MAX_INTEREST_USERS, seed)]
        title = f"users described in words, history hidden (n={len(rows)}, a sample of {int(said.sum())})"
    seen = [warm.seen[r] for r in rows]
    relevant = [warm.relevant[r] for r in rows]
    depth = max(ks)
    popularity = split.popularity()
    reference, vectors, used = reference_users(candidate, split.history_idx, split.seen_idx, pairs, split.users, seed)
    position = pd.Index(reference).get_indexer(np.asarray(warm.rows)[rows])
    words = candidate.words_vectors([texts[r] for r in rows])
    lists = np.full((len(rows), depth), PAD, dtype=np.int64)
    # The cold items are left out as on the warm protocol: banned for every user.
    for part, model, queries in fold_scores(words, vectors, used, position, l2, popularity):
        searcher = model.without(split.cold_idx).search
        _, lists[part] = rank_users(searcher, queries, [seen[r] for r in part], popularity, depth,
                                    candidate.batch_size, np.zeros(len(part), dtype=bool))  # fmt: skip
    results = {MODEL: ranking_metrics(lists, relevant, split.n_items, ks)}
    lists = bl.rank_users(bl.MostPopular().fit(split.train), np.asarray(warm.rows)[rows], seen, depth,
                          banned=split.cold_idx)  # what such a user gets otherwise
    results["popularity"] = ranking_metrics(lists, relevant, split.n_items, ks)
    log.info("users described in words: %s", {n: round(m[f"ndcg_at_{ks[0]}"], 4) for n, m in results.items()})
    return Segment(title, len(rows), results)


def check_interests(
    retriever, validation, pairs: pd.DataFrame, popularity: np.ndarray, k: int, seed: int = 0
) -> dict[str, float]:
    """Whether users known only by their words should be served from them, and how: each
    validation user's history is replaced by ``interest_texts`` of it, and their validation event
    ranked by a ``WordsModel`` fitted on the other validation users (five folds) with each ridge
    strength in ``WORDS_L2``, and by popularity. The best strength (``interests.l2``) is used
    (``interests.used``) only where it wins, as the ranker is: on a catalogue whose words say
    little beyond popularity, such users keep the popularity fallback. At most
    ``MAX_INTEREST_USERS`` users (a ``stable_sample`` by user id) take part."""
    from recsys_lib.models.two_tower import PAD as NO_ITEM
    from recsys_lib.recommend import rank_users

    if validation is None or not len(validation) or retriever.tokenizer is None:
        return {"interests.used": 0.0}
    validation = validation.sample(MAX_INTEREST_USERS, seed)
    histories = [h[h != NO_ITEM] for h in validation.history]
    rows, vectors, used = reference_users(retriever, histories, validation.exclude, pairs, validation.keys, seed)
    if len(rows) < MIN_INTEREST_USERS:
        return {"interests.used": 0.0, "interests.users": float(len(rows))}
    exclude = [validation.exclude[r] for r in rows]
    relevant = [{int(validation.target[r])} for r in rows]

    def ndcg(lists: np.ndarray) -> float:
        return ranking_metrics(lists, relevant, len(popularity), (k,))[f"ndcg_at_{k}"]

    def words_ndcg(l2: float) -> float:
        lists = np.full((len(rows), k), PAD, dtype=np.int64)
        for part, model, queries in fold_scores(vectors, vectors, used, np.arange(len(rows)), l2, popularity):
            _, lists[part] = rank_users(model.search, queries, [exclude[r] for r in part], popularity, k,
                                        retriever.batch_size, np.zeros(len(part), dtype=bool))  # fmt: skip
        return ndcg(lists)

    by_l2 = {l2: words_ndcg(l2) for l2 in WORDS_L2}
    l2 = max(by_l2, key=by_l2.get)
    _, popular = rank_users(retriever.search, np.zeros((len(rows), 1), np.float32), exclude, popularity, k,
                            retriever.batch_size, np.ones(len(rows), dtype=bool))  # fmt: skip
    fallback = ndcg(popular)
    used_words = by_l2[l2] > fallback
    log.info("users described in words, on validation events: NDCG@%d %s (their words, by l2) vs %.4f "
             "(popularity) on %d users: %s", k, {p: round(v, 4) for p, v in by_l2.items()}, fallback, len(rows),
             f"words used, l2 {l2}" if used_words else "popularity kept")  # fmt: skip
    return {
        "interests.used": float(used_words),
        "interests.l2": float(l2),
        "interests.users": float(len(rows)),
        f"interests.model_ndcg_at_{k}": by_l2[l2],
        f"interests.popularity_ndcg_at_{k}": fallback,
    }

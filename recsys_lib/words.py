"""Users known by their words: the items that people who describe themselves alike use.

A user with no history who said what they like (the users input's ``interests``) is ranked from
those words. The fine-tuned transformer reads them (``Retriever.words_vectors``), and a ridge
regression maps that vector to the catalogue. It is fitted in closed form on *reference users*,
warm users each described by the words of their own history (``interest_texts``) and known by
the items they used:

    scores(words) = e(words) (EᵀE + λI)⁻¹ Eᵀ X

with E the reference users' word vectors [R, d] and X their items [R, n_items] (binary). Read
right to left, it weighs each reference user by how much their words explain the new user's
(``queries``), then sums the items of the weighted users (``search``): what the items' texts
cannot say, who uses them, comes from behaviour. On the bundled sample (each warm user's
history hidden, their words standing in), NDCG@10 went from 1.09x most-popular, with the words'
nearest item texts read as a pseudo-history by the user tower, to 1.27x. λ is chosen on
validation events (``evaluation.search.check_interests``), relative to R/d so that one value
fits any number of reference users.
Tests: tests/unit/recsys_lib/test_words.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_lib.index import best_k
from recsys_lib.sampling import stable_sample

log = logging.getLogger(__name__)

# Warm users the regression learns from at most (a seeded sample): each one's words go through the
# transformer, and beyond a few thousand more of them changes the weights little.
REFERENCE_USERS = 20_000
WORDS_L2 = (0.3, 1.0, 3.0)  # the ridge strengths the validation check chooses from (x R / d)
DEFAULT_WORDS_L2 = 1.0  # a model version whose run chose none
TIE_BREAK = 1e-5
SCORE_CELLS = 16_000_000  # scores computed at once at most (query rows x catalogue items): 64 MB


@dataclass(frozen=True)
class WordsModel:
    """A fitted words → items regression over reference users."""

    projection: np.ndarray  # [d, R] (EᵀE + λI)⁻¹ Eᵀ: a text vector -> a weight per reference user
    used: sp.csr_matrix  # [R, n_items] each reference user's items (1.0 where used)
    tie_break: np.ndarray  # [n_items] in [0, 1]: log-popularity, orders the items of equal score
    banned: np.ndarray | None = None  # catalogue indices it never returns (``without``)

    @classmethod
    def fit(cls, text_vectors: np.ndarray, used: sp.csr_matrix, l2: float, popularity: np.ndarray) -> "WordsModel":
        """Ridge from the reference users' text vectors [R, d] to their items [R, n_items]; ``l2``
        is relative: λ = l2 x R / d (each unit text vector adds about 1/d to the Gram's diagonal).
        Items of equal score (those no reference user used, above all) go by ``popularity``."""
        e = np.asarray(text_vectors, dtype=np.float64)
        n, d = e.shape
        gram = e.T @ e + (l2 * max(n, 1) / d) * np.eye(d)
        projection = np.linalg.solve(gram, e.T).astype(np.float32)
        log_popularity = np.log1p(np.asarray(popularity, dtype=np.float64))
        tie_break = (log_popularity / max(log_popularity.max(initial=0.0), 1e-12)).astype(np.float32)
        return cls(projection, sp.csr_matrix(used, dtype=np.float32), tie_break)

    @property
    def n_items(self) -> int:
        return self.used.shape[1]

    def without(self, items: np.ndarray) -> "WordsModel":
        """The same model, never returning these catalogue indices."""
        return replace(self, banned=np.asarray(items, dtype=np.int64))

    def queries(self, text_vectors: np.ndarray) -> np.ndarray:
        """Weights [q, R] of the reference users for users whose words have these vectors [q, d]."""
        return np.asarray(text_vectors, dtype=np.float32) @ self.projection

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k], catalogue indices [q, k]) best first: the ``Searcher`` that
        ``recommend.rank_users`` serves a list from. Items no reference user used score 0; ties
        go to the more popular item (a nudge of at most ``TIE_BREAK`` of the row's largest score)."""
        k = min(k, self.n_items)
        scores = np.empty((len(queries), k), np.float32)
        ids = np.empty((len(queries), k), np.int64)
        step = max(1, SCORE_CELLS // max(self.n_items, 1))
        used_t = self.used.T.tocsr()
        for start in range(0, len(queries), step):
            # row-major: best_k's passes along the rows run faster than on the transposed product
            block = np.ascontiguousarray((used_t @ queries[start : start + step].T).T)
            block += TIE_BREAK * np.abs(block).max(axis=1, keepdims=True) * self.tie_break
            if self.banned is not None:
                block[:, self.banned] = -np.inf
            scores[start : start + step], ids[start : start + step] = best_k(block, k)
        ids[~np.isfinite(scores)] = -1
        return scores, ids


def used_matrix(item_idx: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """[users, n_items] 1.0 where a user used an item (catalogue indices per user)."""
    indptr = np.concatenate([[0], np.cumsum([len(i) for i in item_idx])])
    flat = np.concatenate(item_idx) if indptr[-1] else np.zeros(0, np.int64)
    matrix = sp.csr_matrix((np.ones(len(flat), np.float32), flat, indptr), shape=(len(item_idx), n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def reference_users(
    retriever, history_idx: list[np.ndarray], seen_idx: list[np.ndarray], pairs: pd.DataFrame, users=None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """(rows, text vectors [R, d], items [R, n_items]) of the reference users among these users
    (catalogue indices: the history their words describe, every item they used; ``users``: their
    ids, None: positions): at most ``REFERENCE_USERS`` of those with a history, a
    ``stable_sample`` by id, so that their words stay cached from night to night."""
    from recsys_lib.models.examples import interest_texts

    rows = np.flatnonzero([len(h) > 0 for h in history_idx])
    if len(rows) > REFERENCE_USERS:
        keys = rows if users is None else np.asarray(users)[rows]
        rows = rows[stable_sample(keys, REFERENCE_USERS, seed)]
    texts = interest_texts([history_idx[r] for r in rows], pairs, retriever.items.ids)
    said = np.array([bool(t) for t in texts], dtype=bool)
    rows = rows[said]
    vectors = retriever.words_vectors([t for t, s in zip(texts, said) if s]) if len(rows) else None
    if vectors is None:
        vectors = np.zeros((0, retriever.items.vectors.shape[1]), np.float32)
    return rows, vectors, used_matrix([seen_idx[r] for r in rows], len(retriever.items))


def fold_scores(
    words: np.ndarray, vectors: np.ndarray, used: sp.csr_matrix, same: np.ndarray, l2: float, popularity: np.ndarray,
    folds: int = 5,
) -> list[tuple[np.ndarray, WordsModel, np.ndarray]]:
    """For an honest measurement: (scored rows, a model fitted without them, their queries) per
    fold of the users whose words are ``words`` [u, d]. ``same`` [u] is each scored user's row
    among the reference users (-1: not one of them); a fold's model never learns from its own users."""
    parts = []
    for fold in range(folds):
        rows = np.arange(fold, len(words), folds)
        if not len(rows):
            continue
        keep = np.ones(len(vectors), dtype=bool)
        keep[same[rows][same[rows] >= 0]] = False
        model = WordsModel.fit(vectors[keep], used[keep], l2, popularity)
        parts.append((rows, model, model.queries(words[rows])))
    return parts

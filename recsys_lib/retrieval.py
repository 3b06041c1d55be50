"""The model's retrieval path: item vectors as index rows, users as queries, top-N from the index.

FAISS rows are ``[item vector, item bias]`` and user queries ``[user vector / T, 1]``, so an inner
product is exactly the model's logit (cosine / T + bias); item-to-item queries ``[item vector,
0]`` are plain cosine similarity over the same index. A ``Retriever`` holds the user tower and
an index over one model version's item vectors; recommend serves through it and evaluate
measures the same path, for the candidate and the champion alike.
Tests: tests/unit/recsys_lib/test_retrieval.py (hand-made vectors, a tiny random encoder).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys_lib.embedding import ItemVectors
from recsys_lib.settings import IndexSettings


def retrieval_items(vectors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Index rows [n, d + 1] = [vector, bias], so that inner products with ``retrieval_users``
    are the model's logits and with ``retrieval_neighbours`` plain cosines."""
    return np.hstack([vectors, bias.reshape(-1, 1)]).astype(np.float32)


def retrieval_users(users: np.ndarray, temperature: float) -> np.ndarray:
    """Queries [u, d + 1] = [user / temperature, 1]: inner product = cosine / T + item bias."""
    return np.hstack([users / temperature, np.ones((len(users), 1), users.dtype)]).astype(np.float32)


def history_profiles(vectors: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
    """Unit vectors [u, d]: the plain mean of each history's item vectors (catalogue indices),
    zeros for an empty history. Users built from the item vectors alone, without the user tower:
    a session the nightly run has not seen, or a service that holds only the published
    ``item_vectors``; scored as a user vector is (``profile_scores``), trained for by the content
    term of ``train.content_loss_weight``."""
    profiles = np.zeros((len(histories), vectors.shape[1]), np.float32)
    for row, history in enumerate(histories):
        if len(history):
            profiles[row] = vectors[history].mean(axis=0)
    return profiles / np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)


def profile_scores(items: ItemVectors, temperature: float, histories: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Scores [u, len(rows)] of the catalogue items ``rows`` for users who are the mean of their
    history's item vectors: cosine / T + item bias, the model's logit with the profile in the
    user tower's place."""
    queries = retrieval_users(history_profiles(items.vectors, histories), temperature)
    return queries @ retrieval_items(items.vectors[rows], items.bias[rows]).T


def retrieval_neighbours(vectors: np.ndarray) -> np.ndarray:
    """Item-to-item queries [n, d + 1] = [vector, 0]: inner product = cosine similarity."""
    return np.hstack([vectors, np.zeros((len(vectors), 1), vectors.dtype)]).astype(np.float32)


@dataclass(frozen=True)
class IndexBuild:
    """An index over item vectors and what building it measured."""

    index: Any  # a FAISS index; row i is catalogue index i
    kind: str
    recall: float  # recall@cfg.recall_k of item-to-item queries against exact search
    seconds: float

    def manifest(self, items: ItemVectors, cfg: IndexSettings) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "items": len(items),
            "dim": int(items.vectors.shape[1]) + 1,
            f"recall_at_{cfg.recall_k}": self.recall,
            "build_seconds": self.seconds,
        }


def build_item_index(items: ItemVectors, cfg: IndexSettings, seed: int = 0) -> IndexBuild:
    """Build the index ``cfg`` asks for over ``items`` and measure its recall against exact search."""
    from recsys_lib.index import build_index, index_kind, measure_recall

    rows = retrieval_items(items.vectors, items.bias)
    started = time.perf_counter()
    index = build_index(rows, cfg, seed=seed)
    seconds = time.perf_counter() - started
    queries = retrieval_neighbours(items.vectors)
    recall = measure_recall(index, rows, cfg.recall_k, cfg.recall_queries, seed=seed, queries=queries)
    return IndexBuild(index, index_kind(index), recall, seconds)


class Retriever:
    """A model's user tower over an index of its item vectors.

    Args:
        model: a ``TwoTowerModel`` (its user tower and temperature are used).
        items: the model's vectors for the catalogue; the index rows follow their order.
        index: a FAISS index over ``retrieval_items(items)``.
        batch_size: users embedded per batch.
        tokenizer: the model's tokenizer, for texts as users (``text_vectors``); None: none.
        banned: catalogue indices ``search`` never returns (``without``); None: none.
        rows: the catalogue index of each index row (``without``); None: row i is item i.
        pooled: texts -> the transformer's pooled outputs, for ``words_vectors``
            (``embedding.CachedTexts``); None: the model's fp32 torch encoder, nothing cached.
    """

    def __init__(self, model, items: ItemVectors, index, batch_size: int = 4096, tokenizer=None, banned=None,
                 rows=None, pooled=None):  # fmt: skip
        self.model = model
        self.items = items
        self.index = index
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.banned = banned
        self.rows = rows
        self.pooled = pooled

    def without(self, items: np.ndarray) -> "Retriever":
        """The same model with ``items`` (catalogue indices) never retrieved: how the evaluation
        leaves its cold items out of every warm list. An exact index is rebuilt over the other
        items (a FAISS ID selector turns its BLAS search into a scalar loop, 5x slower at d=385);
        an approximate one skips them through the selector, where rebuilding costs minutes."""
        from recsys_lib.index import flat_index, index_kind

        items = np.asarray(items, dtype=np.int64)
        if self.banned is not None:
            items = np.union1d(items, self.banned)
        if index_kind(self.index) != "flat":
            return Retriever(self.model, self.items, self.index, self.batch_size, self.tokenizer, items,
                             pooled=self.pooled)  # fmt: skip
        keep = np.setdiff1d(np.arange(len(self.items)), items)
        index = flat_index(retrieval_items(self.items.vectors[keep], self.items.bias[keep]))
        return Retriever(self.model, self.items, index, self.batch_size, self.tokenizer, items, keep, self.pooled)

    @classmethod
    def with_index(
        cls, model, items: ItemVectors, cfg: IndexSettings, batch_size: int = 4096, tokenizer=None, pooled=None
    ) -> "Retriever":
        """A retriever over a new in-memory index of ``items``, built as ``cfg`` says."""
        from recsys_lib.index import build_index

        index = build_index(retrieval_items(items.vectors, items.bias), cfg)
        return cls(model, items, index, batch_size, tokenizer, pooled=pooled)

    @property
    def temperature(self) -> float:
        return self.model.temperature.item()

    def user_vectors(self, history_idx: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(unit user vectors [u, d], fallback [u] bool) for users with these histories
        (catalogue indices, oldest first). A user whose history holds no catalogue item has no
        vector (zeros) and falls back to popularity."""
        import torch

        from recsys_lib.models.two_tower import embed_users, history_matrix

        matrix = history_matrix(history_idx, self.model.config.history_length)
        vectors = embed_users(self.model, torch.from_numpy(self.items.vectors), matrix, self.batch_size).numpy()
        return vectors, np.array([len(h) == 0 for h in history_idx], dtype=bool)

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """Unit vectors [t, d] of texts through the item tower's text path: where a query or a
        user's own words land among the items."""
        from recsys_lib.models.two_tower import TokenizedDocuments, embed_text

        docs = TokenizedDocuments.from_texts(self.tokenizer, texts, self.model.config.max_length)
        device = next(self.model.parameters()).device
        return embed_text(self.model, docs, 256, device).cpu().numpy()

    def words_vectors(self, texts: list[str]) -> np.ndarray:
        """Unit vectors [t, d] of what users say they like, for a ``WordsModel``: the
        transformer's pooled output, before the projection that training bends toward placing
        items (on the bundled sample's users described in words, NDCG@10 0.107 from these
        against 0.103 through the projection)."""
        from recsys_lib.models.two_tower import TokenizedDocuments, embed_text

        if self.pooled is not None:
            pooled = self.pooled(list(texts))
        else:
            docs = TokenizedDocuments.from_texts(self.tokenizer, texts, self.model.config.max_length)
            device = next(self.model.parameters()).device
            pooled = embed_text(self.model, docs, 256, device, pooled=True).cpu().numpy()
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def user_queries(self, history_idx: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(index queries [u, d + 1], fallback [u] bool): ``user_vectors`` as index queries."""
        vectors, fallback = self.user_vectors(history_idx)
        return retrieval_users(vectors, self.temperature), fallback

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k], catalogue indices [q, k]) of the best index rows; -1 pads."""
        from recsys_lib.index import search

        if self.rows is not None:  # an index over some items only: its rows map back to the catalogue
            scores, ids = search(self.index, queries, k)
            return scores, np.where(ids >= 0, self.rows[ids.clip(min=0)], -1)
        return search(self.index, queries, k, self.banned)

    def neighbour_queries(self) -> np.ndarray:
        return retrieval_neighbours(self.items.vectors)

    def score_items(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact scores [q, len(rows)] of queries against the catalogue items ``rows``."""
        return queries @ retrieval_items(self.items.vectors[rows], self.items.bias[rows]).T

"""The baselines a practitioner would otherwise pick, run on the same split in the same run.

Every ranker scores users (rows of the training user-item matrix) against catalogue items:
  MostPopular   distinct users per item
  ItemKNN       item-item cosine on the binary user-item matrix, top-k neighbours, shrinkage
  EASE          Steck's closed-form item-item regression (2019), over the most popular items
  ALS           Spark MLlib ALS with implicit feedback (Hu, Koren, Volinsky 2008)
  TfidfContent  TF-IDF over item documents; a user is the mean of their history's rows
  Implicit      the ``implicit`` library's ALS and BPR
  Cornac        a ``cornac`` model (``cornac_bpr``, ``cornac_bivae``: the Microsoft Recommenders
                benchmark's settings)
``tune`` picks hyper-parameters on the validation events (each user's last training event) and
``top_k`` turns scores into ranked lists with seen items excluded.
Tests: tests/unit/recsys_lib/test_baselines.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from recsys_lib.index import best_k

log = logging.getLogger(__name__)


def interaction_matrix(user_rows: np.ndarray, item_cols: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary [n_users, n_items] matrix with a 1 where a user interacted with an item."""
    data = np.ones(len(user_rows), dtype=np.float32)
    m = sp.csr_matrix((data, (user_rows, item_cols)), shape=(n_users, n_items))
    m.data[:] = 1.0
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def history_indicator(histories: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary [len(histories), n_items] rows with a 1 at each item of each history (repeats count once)."""
    items = [np.unique(np.asarray(h, dtype=np.int64)) for h in histories]
    indptr = np.concatenate([[0], np.cumsum([len(h) for h in items])])
    indices = np.concatenate(items) if items else np.empty(0, np.int64)
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(histories), n_items))


def top_k(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int, banned: np.ndarray | None = None) -> np.ndarray:
    """Indices [b, k] of the highest scores per row, ``exclude`` (per row) and ``banned`` (every
    row) removed; -1 where none is left."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    if banned is not None:
        scores[:, banned] = -np.inf
    for row, items in enumerate(exclude):
        if len(items):
            scores[row, items] = -np.inf
    best, ids = best_k(scores, k)
    ids = np.where(np.isfinite(best), ids, -1)
    return np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)


class MostPopular:
    name = "popularity"

    def fit(self, matrix: sp.csr_matrix) -> "MostPopular":
        self.counts = np.asarray(matrix.sum(axis=0)).ravel().astype(np.float32)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts)))


@dataclass
class ItemKNN:
    neighbours: int = 100
    shrink: float = 10.0
    name: str = "item_knn"

    block: int = 4096  # items whose co-occurrence rows are held at once: memory stays bounded at any size

    def fit(self, matrix: sp.csr_matrix) -> "ItemKNN":
        x = matrix.tocsc().astype(np.float32)
        by_item = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        blocks = []
        for start in range(0, x.shape[1], self.block):
            co = (by_item[start : start + self.block] @ x).tocoo()
            rows, cols, vals = co.row + start, co.col, co.data
            keep = rows != cols
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
            sim = vals / (norms[rows] * norms[cols] + self.shrink + 1e-9)
            block = sp.csr_matrix((sim, (rows - start, cols)), shape=co.shape)
            blocks.append(_top_k_per_row(block, self.neighbours))
        # _top_k_per_row hands back each block transposed: [n_items, block] columns side by side
        self.similarity = sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((0, 0), dtype=np.float32)
        self.matrix = matrix
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.asarray((self.matrix[users] @ self.similarity).todense(), dtype=np.float32)


def _top_k_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each row (each item's k nearest neighbours)."""
    m = m.tocsr()
    rows, cols, vals = [], [], []
    for r in range(m.shape[0]):
        start, end = m.indptr[r], m.indptr[r + 1]
        if end == start:
            continue
        data, idx = m.data[start:end], m.indices[start:end]
        if end - start > k:
            best = np.argpartition(-data, k - 1)[:k]
            data, idx = data[best], idx[best]
        rows.append(np.full(len(idx), r))
        cols.append(idx)
        vals.append(data)
    if not rows:
        return sp.csr_matrix(m.shape[::-1], dtype=np.float32)
    # s[i, j] = sim(i, j) for j among i's neighbours; scoring uses s.T so that a user's score for
    # item i sums the similarities of i's neighbours the user has interacted with.
    s = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape)
    return s.T.tocsr().astype(np.float32)


@dataclass
class EASE:
    """EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019): the item-item weights B that
    best rebuild the user-item matrix X from itself with a zero diagonal, in closed form:
    P = (XᵀX + l2·I)⁻¹, B = -P / diag(P), diag(B) = 0; a user's score for item j is Σ B[i, j] over
    the items i they have seen. The strongest simple collaborative model on random splits
    (ML-100K random_item NDCG@10 0.496 vs tuned item-kNN 0.446 and cornac BiVAE 0.487).

    B is dense and its cost cubic, so it covers the ``max_items`` most popular items (10,000:
    400 MB and a few seconds of Cholesky on 2 cores); the others score NaN (``pair_scores``) or
    are never recommended (``scores``)."""

    l2: float = 300.0
    max_items: int = 10_000
    name: str = "ease"

    def fit(self, matrix: sp.csr_matrix) -> "EASE":
        counts = np.asarray(matrix.sum(axis=0)).ravel()
        covered = np.flatnonzero(counts > 0)
        if len(covered) > self.max_items:
            covered = np.sort(covered[np.argsort(-counts[covered], kind="stable")[: self.max_items]])
        x = matrix.tocsc()[:, covered].astype(np.float32)
        gram = np.asarray((x.T @ x).todense(), dtype=np.float32)
        gram[np.diag_indices_from(gram)] += self.l2
        chol, info = scipy.linalg.lapack.spotrf(gram, lower=False, overwrite_a=True)
        if info == 0:
            inverse, info = scipy.linalg.lapack.spotri(chol, lower=False, overwrite_c=True)
        if info != 0:
            raise ValueError(f"EASE: the regularised Gram matrix is not positive definite (LAPACK info {info})")
        _mirror_upper(inverse)
        # P is symmetric, so its transpose is P itself, in row-major order (LAPACK hands back
        # column-major): each batch's sparse x dense product would otherwise copy all of B first.
        weights = inverse.T
        weights /= -np.diag(weights).copy()[None, :]
        np.fill_diagonal(weights, 0.0)
        self.weights = weights
        self.position = np.full(matrix.shape[1], -1, dtype=np.int64)
        self.position[covered] = np.arange(len(covered))
        self.covered = covered
        self.matrix = matrix
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        out = np.full((len(users), self.matrix.shape[1]), -np.inf, dtype=np.float32)
        out[:, self.covered] = self.matrix[users][:, self.covered] @ self.weights
        return out

    def _covered_scores(self, seen: Sequence[np.ndarray]) -> np.ndarray:
        """[u, covered] scores of the covered items from the items each user has seen (catalogue indices)."""
        rows = [self.position[np.asarray(h, dtype=np.int64)] for h in seen]
        return history_indicator([r[r >= 0] for r in rows], len(self.covered)) @ self.weights

    def pair_scores(self, seen: Sequence[np.ndarray], ids: np.ndarray, block: int = 1024) -> np.ndarray:
        """[u, m] each user's score for their candidates ``ids`` (catalogue indices, >= 0) from
        the items they have seen (catalogue indices); NaN where the candidate is not covered."""
        out = np.full(ids.shape, np.nan, dtype=np.float32)
        for start in range(0, len(seen), block):
            rows = slice(start, start + block)
            out[rows] = self._pairs(self._covered_scores(seen[rows]), ids[rows])
        return out

    def top(self, seen: Sequence[np.ndarray], k: int, block: int = 1024) -> np.ndarray:
        """[u, k] each user's best ``k`` covered items (catalogue indices, best first, -1 pads)
        that they have not seen."""
        out = np.full((len(seen), k), -1, dtype=np.int64)
        for start in range(0, len(seen), block):
            part = seen[start : start + block]
            out[start : start + len(part)] = self._top(self._covered_scores(part), part, k)
        return out

    def of_users(self, seen: Sequence[np.ndarray]) -> "UsersEASE":
        """These users' scores computed once, for both ``top`` and ``pair_scores`` of them."""
        return UsersEASE(self, seen, self._covered_scores(seen))

    def _pairs(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        cols = self.position[ids]
        got = np.take_along_axis(dense, cols.clip(min=0), axis=1)
        return np.where(cols >= 0, got, np.nan).astype(np.float32)

    def _top(self, dense: np.ndarray, seen: Sequence[np.ndarray], k: int) -> np.ndarray:
        out = np.full((len(seen), k), -1, dtype=np.int64)
        k = min(k, len(self.covered))
        if not k:
            return out
        dense = dense.copy()
        for row, history in enumerate(seen):
            pos = self.position[np.asarray(history, dtype=np.int64)]
            dense[row, pos[pos >= 0]] = -np.inf
        scores, best = best_k(dense, k)
        out[:, :k] = np.where(np.isfinite(scores), self.covered[best], -1)
        return out


@dataclass(frozen=True)
class UsersEASE:
    """One batch of users' EASE scores, computed once: the ranker widens these users' candidates
    with their ``top`` and reads ``pair_scores`` of them as a feature, and the sparse x dense
    product behind both was a fifth of recommend's time at 100k users when made twice."""

    ease: EASE
    seen: Sequence[np.ndarray]
    dense: np.ndarray  # [u, covered]

    def top(self, seen: Sequence[np.ndarray], k: int) -> np.ndarray:
        self._same(seen)
        return self.ease._top(self.dense, seen, k)

    def pair_scores(self, seen: Sequence[np.ndarray], ids: np.ndarray) -> np.ndarray:
        self._same(seen)
        return self.ease._pairs(self.dense, ids)

    def _same(self, seen: Sequence[np.ndarray]) -> None:
        if seen is not self.seen:
            raise ValueError("UsersEASE answers only for the users it was computed for")


def _mirror_upper(m: np.ndarray, block: int = 2048) -> None:
    """Copy the upper triangle of a square matrix onto its lower one in place (LAPACK's symmetric
    routines fill one triangle), a band of rows at a time so no second full matrix is made."""
    for start in range(0, m.shape[0], block):
        end = min(start + block, m.shape[0])
        m[start:end, :start] = m[:start, start:end].T
        square = m[start:end, start:end]
        square[:] = np.triu(square) + np.triu(square, 1).T


@dataclass
class ALS:
    """Spark MLlib ALS, implicit feedback: confidence 1 + alpha for observed pairs."""

    spark: object = field(repr=False)
    rank: int = 64
    reg: float = 0.1
    alpha: float = 10.0
    iterations: int = 15
    seed: int = 0
    name: str = "als"

    def fit(self, matrix: sp.csr_matrix) -> "ALS":
        import pandas as pd
        from pyspark.ml.recommendation import ALS as SparkALS

        coo = matrix.tocoo()
        pairs = pd.DataFrame(
            {
                "user": coo.row.astype(np.int32),
                "item": coo.col.astype(np.int32),
                "rating": np.ones(len(coo.row), dtype=np.float32),
            }
        )
        df = self.spark.createDataFrame(pairs)
        model = SparkALS(
            rank=self.rank,
            regParam=self.reg,
            alpha=self.alpha,
            maxIter=self.iterations,
            implicitPrefs=True,
            userCol="user",
            itemCol="item",
            ratingCol="rating",
            seed=self.seed,
            coldStartStrategy="drop",
        ).fit(df)
        self.user_factors = _factors(model.userFactors, matrix.shape[0], self.rank)
        self.item_factors = _factors(model.itemFactors, matrix.shape[1], self.rank)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T


class Implicit:
    """A matrix factorisation of the ``implicit`` library: ``"als"`` (Hu, Koren, Volinsky 2008;
    confidence 1 + alpha for observed pairs) or ``"bpr"`` (Rendle et al. 2009, item bias included),
    with that class's keyword parameters."""

    def __init__(self, kind: str, seed: int = 0, **params):
        self.kind, self.seed, self.params = kind, seed, params
        self.name = f"implicit_{kind}"

    def fit(self, matrix: sp.csr_matrix) -> "Implicit":
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking
        from threadpoolctl import threadpool_limits

        kind = {"als": AlternatingLeastSquares, "bpr": BayesianPersonalizedRanking}[self.kind]
        model = kind(random_state=self.seed, **self.params)
        with threadpool_limits(1, "blas"):  # implicit parallelises itself; nested BLAS threads slow it down
            model.fit(matrix.astype(np.float32), show_progress=False)
        self.user_factors, self.item_factors = model.user_factors, model.item_factors
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T


@dataclass
class Cornac:
    """A ``cornac`` model trained on the binary matrix; cornac's own user and item ids are mapped
    back to the matrix's rows and columns (items it never saw score -inf: never recommended).

    ``make`` builds the model; BPR and BiVAE score in batches, other models user by user.
    """

    make: Callable[[], object] = field(repr=False)
    name: str = "cornac"

    def fit(self, matrix: sp.csr_matrix) -> "Cornac":
        import cornac

        coo = matrix.tocoo()
        triples = list(zip(coo.row.astype(str), coo.col.astype(str), np.ones(coo.nnz, dtype=float)))
        data = cornac.data.Dataset.from_uir(triples, seed=0)
        self.model = self.make()
        self.model.fit(data)
        self.user_index = np.full(matrix.shape[0], -1, dtype=np.int64)
        for raw, idx in data.uid_map.items():
            self.user_index[int(raw)] = idx
        self.item_columns = np.empty(len(data.iid_map), dtype=np.int64)
        for raw, idx in data.iid_map.items():
            self.item_columns[idx] = int(raw)
        self.n_items = matrix.shape[1]
        return self

    def _known_scores(self, internal: np.ndarray) -> np.ndarray:
        m = self.model
        if hasattr(m, "u_factors") and hasattr(m, "i_biases"):  # BPR
            return m.u_factors[internal] @ m.i_factors.T + m.i_biases
        if hasattr(m, "bivae"):  # BiVAE
            import torch

            with torch.no_grad():
                theta = m.bivae.mu_theta[torch.as_tensor(internal)]
                return m.bivae.decode_user(theta, m.bivae.mu_beta).cpu().numpy()
        return np.vstack([m.score(int(u)) for u in internal])

    def scores(self, users: np.ndarray) -> np.ndarray:
        out = np.full((len(users), self.n_items), -np.inf, dtype=np.float32)
        internal = self.user_index[users]
        known = internal >= 0
        if known.any():
            rows = np.flatnonzero(known)
            out[np.ix_(rows, self.item_columns)] = self._known_scores(internal[known])
        return out


def cornac_bpr(seed: int = 0) -> Cornac:
    """cornac BPR with the Microsoft Recommenders benchmark's settings."""
    import cornac

    return Cornac(lambda: cornac.models.BPR(k=200, max_iter=100, learning_rate=0.01, lambda_reg=0.001, seed=seed,
                                            verbose=False), name="cornac_bpr")  # fmt: skip


def cornac_bivae(seed: int = 0) -> Cornac:
    """cornac BiVAE with the Microsoft Recommenders benchmark's settings."""
    import cornac

    return Cornac(
        lambda: cornac.models.BiVAECF(k=50, encoder_structure=[100], act_fn="tanh", likelihood="pois", n_epochs=500,
                                      batch_size=128, learning_rate=0.001, seed=seed, use_gpu=False, verbose=False),
        name="cornac_bivae",
    )  # fmt: skip


def _factors(df, n: int, rank: int) -> np.ndarray:
    out = np.zeros((n, rank), dtype=np.float32)
    rows = df.toPandas()
    if len(rows):
        out[rows["id"].to_numpy()] = np.stack(rows["features"].to_numpy()).astype(np.float32)
    return out


@dataclass
class TfidfContent:
    """Content-only: TF-IDF of item documents; a user profile is the mean of their items' rows."""

    documents: Sequence[str] = field(repr=False)
    name: str = "tfidf"

    def fit(self, matrix: sp.csr_matrix) -> "TfidfContent":
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.item_vectors = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1).fit_transform(
            list(self.documents)
        )
        self.matrix = matrix
        return self

    def profiles(self, histories: Sequence[np.ndarray]) -> sp.csr_matrix:
        rows = [np.asarray(h, dtype=np.int64) for h in histories]
        lengths = np.array([len(r) for r in rows])
        pick = sp.csr_matrix(
            (
                np.concatenate([np.full(len(r), 1.0 / max(1, len(r))) for r in rows]) if rows else [],
                (np.repeat(np.arange(len(rows)), lengths), np.concatenate(rows) if rows else []),
            ),
            shape=(len(rows), self.item_vectors.shape[0]),
        )
        return pick @ self.item_vectors

    def scores_for_histories(self, histories: Sequence[np.ndarray], items: np.ndarray | None = None) -> np.ndarray:
        candidates = self.item_vectors if items is None else self.item_vectors[items]
        return np.asarray((self.profiles(histories) @ candidates.T).todense(), dtype=np.float32)

    def scores(self, users: np.ndarray) -> np.ndarray:
        histories = [self.matrix[u].indices for u in users]
        return self.scores_for_histories(histories)


def rank_users(
    ranker, users: np.ndarray, exclude: Sequence[np.ndarray], k: int, batch: int = 1024,
    banned: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k lists [len(users), k] of a fitted ranker, in batches of users; ``exclude`` per user,
    ``banned`` for all."""
    out = [np.empty((0, k), dtype=np.int64)]
    for start in range(0, len(users), batch):
        rows = users[start : start + batch]
        out.append(top_k(ranker.scores(rows), exclude[start : start + batch], k, banned))
    return np.concatenate(out)


def validation_ndcg(
    ranker, users: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray], k: int
) -> float:
    """NDCG@k of each user's single held-out item."""
    lists = rank_users(ranker, users, exclude, k)
    hit = lists == targets[:, None]
    gains = (hit / np.log2(np.arange(2, k + 2))).sum(axis=1)
    return float(gains.mean()) if len(gains) else 0.0


def tune(
    make: Callable[..., object],
    grid: dict[str, Sequence],
    train: sp.csr_matrix,
    users: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    k: int,
) -> tuple[dict, list[tuple[dict, float]]]:
    """Coordinate search on NDCG@k of the validation events; returns (best parameters, every trial).

    Starts from the middle value of each list, then sweeps one parameter at a time with the
    others at their best so far: sum(len(values)) fits instead of their product, which is what
    makes tuning Spark ALS affordable inside a nightly run.
    """
    best = {k: v[len(v) // 2] for k, v in grid.items()}
    tried: dict[tuple, float] = {}
    name = getattr(make, "__name__", None) or getattr(getattr(make, "func", None), "__name__", str(make))

    def trial(params: dict) -> float:
        key = tuple(sorted(params.items()))
        if key not in tried:
            tried[key] = validation_ndcg(make(**params).fit(train), users, targets, exclude, k)
            log.info("tune %s %s: validation ndcg@%d %.4f", name, params, k, tried[key])
        return tried[key]

    score = trial(best)
    for key, values in grid.items():
        for value in values:
            candidate = {**best, key: value}
            if trial(candidate) > score:
                best, score = candidate, tried[tuple(sorted(candidate.items()))]
    return best, [(dict(k), v) for k, v in tried.items()]

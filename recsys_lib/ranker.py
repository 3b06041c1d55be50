"""The second stage: a learned ranker re-orders the retriever's candidates.

The two-tower model retrieves ``rank.candidates`` items per user, and EASE's best
``rank.ease_candidates`` unseen items join them (``ranker_candidates``); a LightGBM LambdaRank
model re-orders them with features the towers do not see well:

  retrieval_score, retrieval_rank, item_bias     what the first stage said
  log_popularity, log_recent, recent_share       the item's events before the user's cut-off,
                                                 overall and in the last ``rank.recent_days``
  item_age_days, days_since_last                 since the item's first and latest event
  user_log_events                                how much the user has done
  category_affinity                              share of the user's history in the item's category
  sim_recent, sim_history, sim_max               cosine to the latest 5 history items' mean, to the
                                                 whole history's mean, and to the closest one
  knn_score, knn_rank                            item-kNN: the summed co-occurrence cosine between
                                                 the candidate and every item the user has seen (its
                                                 ``rank.knn_neighbours`` nearest), and the candidate's
                                                 place in that order among the user's candidates: the
                                                 collaborative signal that wins where order says little
  ease_score, ease_rank                          the same from EASE (``baselines.EASE``: item-item
                                                 regression over the ``rank.ease_items`` most popular
                                                 items; NaN for the others), and its place

Every feature is taken *as of a time per user* from an ``EventLog``: strictly earlier events
only, so nothing after the moment being predicted leaks in. The item-kNN neighbours and EASE
weights are built from the (user, item) pairs of the events the scored model trained on: never
from the events being predicted (train leaves the validation events out, evaluate the holdout).
The ranker learns from the validation events (each user's last training event, which the
evaluation model never trained on), as of each one's own time. With one label per user, its trees
start from a prior (the best of the retrieval, kNN and EASE orders on those events) and correct it;
a 4-fold cross-validation over the users picks how many rounds of trees to add (0: the prior alone)
and checks the result against the retrieval order: the ranker is used only when it wins there.
Business rules apply after it.
Tests: tests/unit/recsys_lib/test_ranker.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_lib.baselines import EASE, ItemKNN, UsersEASE, interaction_matrix
from recsys_lib.embedding import ItemVectors
from recsys_lib.logs import Progress
from recsys_lib.schema import ITEM_COL, TIMESTAMP_COL, USER_COL
from recsys_lib.settings import RankSettings

log = logging.getLogger(__name__)
FEATURES = (
    "retrieval_score", "retrieval_rank", "item_bias", "log_popularity", "log_recent", "recent_share",
    "item_age_days", "days_since_last", "user_log_events", "category_affinity", "sim_recent", "sim_history",
    "sim_max", "knn_score", "knn_rank", "ease_score", "ease_rank",
)  # fmt: skip
KNN_FEATURES = ("knn_score", "knn_rank")
EASE_FEATURES = ("ease_score", "ease_rank")
PRIORS = ("retrieval_rank", "knn_rank", "ease_rank")  # the orders the ranker may start from
ROUNDS = (0, 10, 30, 100, 300)  # the boosting rounds its cross-validation chooses among (0: the prior alone)
DAY = 86_400
RECENT_ITEMS = 5
MODEL_FILE = "ranker.txt"
FOLDS = 4  # the ranker's check: cross-validation over the users it learns from
MIN_DATA = 20  # candidates per leaf: few labels, so no tiny leaves
RANK_BATCH = 4096  # users re-ranked at a time (Ranker.ranked): bounds the memory of EASE scores and features
META_FILE = "ranker.json"


def features_at_end_of_ds(split: str) -> bool:
    """Whether the ranker's features are taken at the end of ds rather than at each user's
    held-out moment: a random split has no such moment (its held-out events lie among the
    training ones), so every training event counts, as on the served path."""
    return split == "random_item"


@dataclass(frozen=True)
class EventLog:
    """Positive events as sorted (item, time) keys: counts and first/last times of any items as of
    any times, by binary search."""

    keys: np.ndarray  # sorted item << 32 | seconds
    start: np.ndarray  # [n_items + 1] first key of each item

    @classmethod
    def from_frame(cls, events: pd.DataFrame, item_ids: pd.Index) -> "EventLog":
        """From rows with item_id and timestamp (epoch seconds); items outside ``item_ids`` are dropped."""
        items = item_ids.get_indexer(events[ITEM_COL])
        times = events[TIMESTAMP_COL].to_numpy(np.int64)
        ok = items >= 0
        keys = np.sort((items[ok].astype(np.int64) << 32) | times[ok])
        start = np.searchsorted(keys, np.arange(len(item_ids) + 1, dtype=np.int64) << 32)
        return cls(keys, start)

    def count_before(self, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Events of each item strictly before the paired time."""
        items = items.astype(np.int64)
        return np.searchsorted(self.keys, (items << 32) | times.astype(np.int64)) - self.start[items]

    def first_last_before(self, items: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first, latest) event time of each item strictly before the paired time; NaN if none."""
        count = self.count_before(items, times)
        first = np.full(len(items), np.nan)
        last = np.full(len(items), np.nan)
        has = count > 0
        base = self.start[items.astype(np.int64)]
        first[has] = self.keys[base[has]] & 0xFFFFFFFF
        last[has] = self.keys[base[has] + count[has] - 1] & 0xFFFFFFFF
        return first, last


@dataclass(frozen=True)
class RankingContext:
    """What features are computed from: the item vectors, categories and the event log."""

    items: ItemVectors
    categories: np.ndarray  # [n_items] first-category code, -1 where none
    events: EventLog
    recent_days: int
    history_items: int = 20  # the latest this many history items count (as when the ranker learned)
    neighbours: Neighbours | None = None  # item-kNN (item_neighbours); None: no knn_score
    ease: EASE | UsersEASE | None = None  # fitted over the catalogue (item_ease); None: no ease_score


@dataclass(frozen=True, eq=False)
class Neighbours:
    """Each item's nearest items as a table: row c holds the items whose co-occurrence makes them
    c's neighbours and their similarities. A candidate's kNN score sums the similarities of its
    neighbours that the user has seen, so a user costs candidates x k look-ups whatever they saw
    (the sparse product of the user's items and the similarity matrix walks every item that counts
    a seen item among its neighbours, thousands for a popular one: 5x slower at 100k items)."""

    items: np.ndarray  # [n_items, k] int32 catalogue indices; n_items pads (an item nobody has seen)
    similarity: np.ndarray  # [n_items, k] float32; 0 pads

    @classmethod
    def from_similarity(cls, similarity: sp.spmatrix) -> "Neighbours":
        """From ``ItemKNN.similarity`` ([seen item, candidate]: column c holds c's neighbours)."""
        by_candidate = sp.csc_matrix(similarity)
        n = by_candidate.shape[1]
        counts = np.diff(by_candidate.indptr)
        k = int(counts.max(initial=0))
        # column c's j-th entry goes to cell c * k + j of the tables
        cell = np.arange(by_candidate.nnz) + np.repeat(np.arange(n) * k - by_candidate.indptr[:-1], counts)
        items = np.full(n * k, n, dtype=np.int32)
        items[cell] = by_candidate.indices
        weights = np.zeros(n * k, dtype=np.float32)
        weights[cell] = by_candidate.data
        return cls(items.reshape(n, k), weights.reshape(n, k))

    def scores(self, seen: list[np.ndarray], ids: np.ndarray, block: int = 32) -> np.ndarray:
        """[u, m] each candidate's kNN score: the similarities of its neighbours among the items
        each user has seen (catalogue indices; a repeated one counts once), ``block`` users at a
        time (a seen-or-not row of the catalogue each, one buffer set and cleared item by item:
        clearing it whole would cost users x catalogue)."""
        n = len(self.items)
        out = np.empty(ids.shape, dtype=np.float32)
        was_seen = np.zeros(min(block, len(seen)) * (n + 1), dtype=bool)
        for start in range(0, len(seen), block):
            part = seen[start : start + block]
            offsets = np.arange(len(part), dtype=np.int64) * (n + 1)
            cells = np.repeat(offsets, [len(h) for h in part]) + np.concatenate([*part, np.empty(0, np.int64)])
            was_seen[cells] = True
            rows = ids[start : start + len(part)]
            hit = was_seen[self.items[rows] + offsets[:, None, None]]  # [b, m, k]
            out[start : start + len(part)] = (self.similarity[rows] * hit).sum(2)
            was_seen[cells] = False
        return out


def item_neighbours(pairs: pd.DataFrame, item_ids: pd.Index, k: int) -> Neighbours:
    """Item-kNN from (user_id, item_id) pairs: cosine of the co-occurrence with a shrink of 10,
    each item's ``k`` nearest kept (``baselines.ItemKNN``)."""
    return Neighbours.from_similarity(ItemKNN(neighbours=k).fit(_pairs_matrix(pairs, item_ids)).similarity)


def item_ease(pairs: pd.DataFrame, item_ids: pd.Index, max_items: int, l2: float) -> EASE:
    """EASE over the catalogue from (user_id, item_id) pairs, its ``max_items`` most popular items covered."""
    return EASE(l2=l2, max_items=max_items).fit(_pairs_matrix(pairs, item_ids))


def item_to_item(
    pairs: pd.DataFrame | None, item_ids: pd.Index, knn_neighbours: int, ease_items: int, ease_l2: float
) -> tuple[Neighbours | None, EASE | None]:
    """(item-kNN neighbours, EASE) from the (user_id, item_id) pairs a retriever learned from; None where off."""
    if (knn_neighbours or ease_items) and pairs is None:
        raise ValueError("this ranker reads item-to-item scores: pass the (user_id, item_id) pairs to build them")
    neighbours = item_neighbours(pairs, item_ids, knn_neighbours) if knn_neighbours else None
    return neighbours, item_ease(pairs, item_ids, ease_items, ease_l2) if ease_items else None


def _pairs_matrix(pairs: pd.DataFrame, item_ids: pd.Index) -> sp.csr_matrix:
    """The binary user x catalogue matrix of (user_id, item_id) pairs; items outside the catalogue dropped."""
    items = item_ids.get_indexer(pairs[ITEM_COL])
    ok = items >= 0
    users = pd.factorize(pairs[USER_COL].to_numpy()[ok])[0]
    return interaction_matrix(users, items[ok], int(users.max(initial=-1)) + 1, len(item_ids))


def candidate_features(
    ctx: RankingContext,
    histories: list[np.ndarray],
    times: np.ndarray,
    ids: np.ndarray,
    scores: np.ndarray,
    seen: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Features [u, m, len(FEATURES)] of each user's candidates, as of each user's time.

    Args:
        histories: per user, catalogue indices of their history, oldest first.
        times: [u] epoch seconds: only events strictly before count.
        ids, scores: [u, m] the retriever's candidates (-1 pads), best first.
        seen: per user, every item they have seen (the kNN score's "history": the whole of it,
            not the user tower's latest items); ``histories`` when not given.
    """
    u, m = ids.shape
    valid = ids >= 0
    safe = ids.clip(min=0)
    out = np.full((u, m, len(FEATURES)), np.nan, dtype=np.float32)
    out[..., 0] = scores
    out[..., 1] = np.arange(m)[None, :]
    out[..., 2] = ctx.items.bias[safe]
    out[..., 3:8] = _item_features(ctx, safe, times)
    _history_features(ctx, histories, safe, out)
    if ctx.neighbours is not None:
        knn = ctx.neighbours.scores(histories if seen is None else seen, safe)
        knn[~valid] = -np.inf
        out[..., FEATURES.index("knn_score")] = knn
        # the candidate's place in the user's own kNN order: comparable across users of any history size
        out[..., FEATURES.index("knn_rank")] = _ranks(knn)
    if ctx.ease is not None:
        ease = ctx.ease.pair_scores(histories if seen is None else seen, safe)
        ease[~valid] = np.nan
        out[..., FEATURES.index("ease_score")] = ease
        out[..., FEATURES.index("ease_rank")] = _ranks(np.where(np.isnan(ease), -np.inf, ease))
    out[~valid] = np.nan
    return out


def _item_features(ctx: RankingContext, ids: np.ndarray, times: np.ndarray) -> np.ndarray:
    """[u, m, 5] log_popularity .. days_since_last of candidates ``ids`` as of each user's time.
    Where every user has the same time (recommend: the end of ds), each distinct item is looked
    up once rather than once per user."""
    u, m = ids.shape
    if len(times) and (times == times[0]).all():
        items, inverse = np.unique(ids, return_inverse=True)
        item_times = np.full(len(items), times[0], dtype=np.int64)
    else:
        items, inverse = ids.ravel(), np.arange(ids.size)
        item_times = np.repeat(times.astype(np.int64), m)
    total = ctx.events.count_before(items, item_times).astype(np.float64)
    recent = total - ctx.events.count_before(items, item_times - ctx.recent_days * DAY)
    first, last = ctx.events.first_last_before(items, item_times)
    per_item = np.stack([np.log1p(total), np.log1p(recent), recent / np.maximum(total, 1),
                         (item_times - first) / DAY, (item_times - last) / DAY], axis=1)  # fmt: skip
    return per_item[inverse.ravel()].reshape(u, m, 5)


def _history_features(ctx: RankingContext, histories: list[np.ndarray], ids: np.ndarray, out: np.ndarray,
                      block: int = 128) -> None:  # fmt: skip
    """Fill user_log_events .. sim_max of ``out`` [u, m, F] from each user's latest
    ``ctx.history_items`` items, ``block`` users at a time (their histories padded on the left:
    one batched product instead of a loop over users). Users without history keep NaN, but for
    user_log_events."""
    lengths = np.array([min(len(h), ctx.history_items) for h in histories], dtype=np.int64)
    out[..., 8] = np.log1p(lengths)[:, None]
    vectors, categories = ctx.items.vectors, ctx.categories
    for start in range(0, len(histories), block):
        rows = np.arange(start, min(start + block, len(histories)))
        rows = rows[lengths[rows] > 0]
        if not len(rows):
            continue
        width = int(lengths[rows].max())
        padded = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.arange(width)[None, :] >= width - lengths[rows][:, None]  # right-aligned: the latest last
        for i, r in enumerate(rows):
            padded[i, width - lengths[r] :] = np.asarray(histories[r], dtype=np.int64)[-lengths[r] :]
        hist = vectors[padded] * mask[..., None]  # [b, h, d], zeros where padding
        cand = vectors[ids[rows]]  # [b, m, d]
        sims = np.matmul(cand, hist.transpose(0, 2, 1))  # [b, m, h]
        sims[~np.broadcast_to(mask[:, None, :], sims.shape)] = -np.inf
        cand_categories = categories[ids[rows]]  # [b, m]
        history_categories = np.where(mask, categories[padded], -2)  # padding matches no category
        same = (cand_categories[:, :, None] == history_categories[:, None, :]).sum(2) / lengths[rows][:, None]
        out[rows, :, 9] = np.where(cand_categories < 0, 0.0, same)
        out[rows, :, 10] = np.einsum("bmd,bd->bm", cand, _unit_rows(hist[:, -RECENT_ITEMS:].sum(1)))
        out[rows, :, 11] = np.einsum("bmd,bd->bm", cand, _unit_rows(hist.sum(1)))
        out[rows, :, 12] = sims.max(2)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Each candidate's place in its user's order by ``scores`` (0 = best): comparable across users."""
    return np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


@dataclass
class Ranker:
    booster: object  # lightgbm.Booster
    candidates: int
    recent_days: int
    use: bool  # it beat the retrieval order, cross-validated
    check: dict  # retrieval_ndcg, ranker_ndcg, users (its check on held-aside users)

    history_items: int = 20  # the history length it learned from: every use cuts histories to it
    knn_neighbours: int = 0  # the item-kNN it learned from (0: none, no knn_score)
    ease_items: int = 0  # the EASE it learned from: items covered (0: none, no ease_score) and its l2
    ease_l2: float = 0.0
    features: tuple[str, ...] = FEATURES  # the columns of candidate_features it reads
    prior: str = ""  # the order its trees correct (one of PRIORS; "": none), weighed by prior_scale
    prior_scale: float = 0.0
    rounds: int | None = None  # the trees it uses (its cross-validation's choice; None: all, 0: the prior alone)
    ease_candidates: int = 0  # EASE's best this many widen the retriever's candidates (ranker_candidates)

    def context(
        self, items: ItemVectors, categories: np.ndarray, events: EventLog, pairs: pd.DataFrame | None = None
    ) -> RankingContext:
        """The features' inputs, cut as this ranker learned them; ``pairs`` (user_id, item_id: the
        events the retriever learned from) give its item-kNN neighbours and EASE weights."""
        neighbours, ease = item_to_item(pairs, items.ids, self.knn_neighbours, self.ease_items, self.ease_l2)
        return RankingContext(items, categories, events, self.recent_days, self.history_items, neighbours, ease)

    def candidate_lists(self, retriever, ctx: RankingContext, histories, exclude, m: int):
        """(scores, ids): what this ranker re-orders for these users, at least ``m`` retrieved items."""
        return ranker_candidates(retriever, ctx.ease, histories, exclude, max(m, self.candidates), self.ease_candidates)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Ranker scores [u, m] of features [u, m, len(FEATURES)]; -inf where the candidate is padding."""
        features = features[..., _columns(self.features)]
        u, m, f = features.shape
        flat = features.reshape(-1, f)
        out = np.full(len(flat), -np.inf, dtype=np.float32)
        valid = ~np.isnan(flat[:, 0])
        if valid.any():
            if self.rounds != 0:
                trees = {} if self.rounds is None else {"num_iteration": self.rounds}
                out[valid] = self.booster.predict(flat[valid], **trees)
            else:
                out[valid] = 0.0
            if self.prior:
                out[valid] += _prior_scores(flat[valid], self.features, self.prior, self.prior_scale)
        return out.reshape(u, m)

    def ranked(self, retriever, ctx: RankingContext, histories, times, exclude, m: int):
        """(scores, ids) [u, >= m]: each user's candidates (``candidate_lists``) re-ordered by the
        ranker, ``RANK_BATCH`` users at a time: EASE's dense scores and the candidates' features
        exist for one batch only, so memory does not grow with the number of users."""
        parts = []
        progress = Progress(log, "re-rank users", len(histories), "users")
        for start in range(0, max(len(histories), 1), RANK_BATCH):
            batch = slice(start, start + RANK_BATCH)
            h, x = histories[batch], exclude[batch]
            # EASE's scores of the batch, made once for the candidates and the features alike
            c = ctx if ctx.ease is None else replace(ctx, ease=ctx.ease.of_users(x))
            parts.append(self.rerank(c, h, times[batch], *self.candidate_lists(retriever, c, h, x, m), x))
            progress.advance(len(h))
        if len(parts) == 1:
            return parts[0]
        width = max(ids.shape[1] for _, ids in parts)

        def padded(part: np.ndarray, value) -> np.ndarray:
            return np.pad(part, ((0, 0), (0, width - part.shape[1])), constant_values=value)

        return (np.concatenate([padded(s, -np.inf) for s, _ in parts]),
                np.concatenate([padded(i, -1) for _, i in parts]))  # fmt: skip

    def rerank(self, ctx: RankingContext, histories, times, scores, ids, seen=None) -> tuple[np.ndarray, np.ndarray]:
        """The candidates re-ordered by the ranker (its scores replace the retrieval's)."""
        ranked = self.score(candidate_features(ctx, histories, times, ids, scores, seen))
        order = np.argsort(-ranked, axis=1, kind="stable")
        new_ids = np.take_along_axis(np.where(ids >= 0, ids, -1), order, axis=1)
        return np.take_along_axis(ranked, order, axis=1), new_ids

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / MODEL_FILE))
        meta = {k: v for k, v in asdict(self).items() if k != "booster"}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Ranker":
        import lightgbm

        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        meta["features"] = tuple(meta["features"])
        if unknown := set(meta["features"]) - set(FEATURES):
            raise ValueError(f"{folder}: the ranker was trained on features this code lacks: {sorted(unknown)}")
        return cls(lightgbm.Booster(model_file=str(folder / MODEL_FILE)), **meta)


def _columns(features: tuple[str, ...]) -> list[int]:
    return [FEATURES.index(f) for f in features]


def _prior_scores(features: np.ndarray, names: tuple[str, ...], prior: str, scale: float) -> np.ndarray:
    """The score the trees start from: ``-scale * log(1 + rank)`` in the ``prior`` order (0 = best),
    a gain that falls off as NDCG's discount does, whatever the scale of the scores behind the order."""
    return -scale * np.log1p(features[..., names.index(prior)])


@dataclass(frozen=True)
class ServedRanking:
    """The ranker as the recommend stage applies it: every user's features as of one time."""

    ranker: Ranker
    context: RankingContext
    time: int  # epoch seconds: the end of ds

    def rerank_users(self, retriever, histories, seen, n: int, rules, popularity) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` (scores, ids) of users with a history: the retriever's candidates re-ordered
        by the ranker, then the business rules (topped up with popular items where they drop)."""
        from recsys_lib.recommend import finish_lists, top_up

        times = np.full(len(histories), self.time)
        scores, ids = self.ranker.ranked(retriever, self.context, histories, times, seen, n)
        scores, ids = finish_lists(scores, ids, [np.empty(0, np.int64)] * len(ids), n, rules)
        if rules is not None and rules.drops_candidates:
            scores, ids = top_up(scores, ids, popularity, seen, rules)
        return scores, ids


def ndcg_of_lists(ids: np.ndarray, target: np.ndarray, k: int) -> float:
    """Mean NDCG@k of one relevant item per user in ranked lists [u, m]."""
    hit = ids[:, :k] == target[:, None]
    return float((hit / np.log2(np.arange(2, hit.shape[1] + 2))).sum(1).mean()) if len(ids) else 0.0


def train_ranker(
    ctx: RankingContext,
    histories: list[np.ndarray],
    times: np.ndarray,
    target: np.ndarray,
    scores: np.ndarray,
    ids: np.ndarray,
    cfg: RankSettings,
    k: int,
    seed: int,
    seen: list[np.ndarray] | None = None,
) -> Ranker | None:
    """LambdaRank on the retriever's candidates of held-out events, checked against the retrieval
    order by cross-validation over the users; None when too few users have their event among their
    candidates (``rank.min_users``).

    Args:
        histories, times, target: per user, the history before the held-out event, its time and
            its item (catalogue indices).
        scores, ids: [u, m] the retriever's candidates for those histories.
        seen: per user, every other item they have seen (the kNN score's input); ``histories``
            when not given.
    """
    import lightgbm

    hit = (ids == target[:, None]).any(1)
    if hit.sum() < cfg.min_users:
        log.info("ranker: %d users have their event among the candidates (< rank.min_users): none", hit.sum())
        return None
    rows = np.flatnonzero(hit)
    absent = (KNN_FEATURES if ctx.neighbours is None else ()) + (EASE_FEATURES if ctx.ease is None else ())
    names = tuple(f for f in FEATURES if f not in absent)
    knn = cfg.knn_neighbours if ctx.neighbours is not None else 0
    ease = (ctx.ease.max_items, ctx.ease.l2) if ctx.ease is not None else (0, 0.0)
    widen = cfg.ease_candidates if ctx.ease is not None else 0
    seen = histories if seen is None else seen
    every = candidate_features(ctx, [histories[r] for r in rows], times[rows], ids[rows], scores[rows],
                               [seen[r] for r in rows])  # fmt: skip
    features = every[..., _columns(names)]
    labels = (ids[rows] == target[rows, None]).astype(np.float32)
    fold = np.random.default_rng(seed).integers(0, FOLDS, len(rows))
    params = {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [k], "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves, "min_data_in_leaf": MIN_DATA, "seed": seed, "deterministic": True,
        "num_threads": 2, "verbosity": -1,
    }  # fmt: skip

    def best_prior(mask) -> str:
        """The order among PRIORS with the best NDCG on these users' events: what the trees correct."""
        if not cfg.prior_scale:
            return ""
        gains = {}
        for name in (p for p in PRIORS if p in names):
            order = np.argsort(features[mask][..., names.index(name)], axis=1, kind="stable")
            gains[name] = ndcg_of_lists(np.take_along_axis(ids[rows][mask], order, axis=1), target[rows][mask], k)
        return max(gains, key=gains.get)

    def fit(mask) -> Ranker:
        valid = ids[rows][mask] >= 0
        prior = best_prior(mask)
        init = _prior_scores(features[mask][valid], names, prior, cfg.prior_scale) if prior else None
        data = lightgbm.Dataset(features[mask][valid], labels[mask][valid], group=valid.sum(1), init_score=init)
        booster = lightgbm.train(params, data, num_boost_round=cfg.rounds)
        return Ranker(booster, cfg.candidates, cfg.recent_days, False, {}, ctx.history_items, knn, *ease, names,
                      prior, cfg.prior_scale if prior else 0.0, None, widen)  # fmt: skip

    # Cross-validated: every user is re-ranked once by a ranker that did not learn from them, with
    # each number of rounds: how far to trust the trees over the prior is chosen here too.
    grid = [r for r in ROUNDS if r < cfg.rounds and (r or cfg.prior_scale)] + [cfg.rounds]
    reranked = {r: np.empty_like(ids[rows]) for r in grid}
    for f in range(FOLDS):
        held = fold == f
        ranker = fit(~held)
        for r in grid:
            ranker.rounds = r
            order = np.argsort(-ranker.score(every[held]), axis=1, kind="stable")
            reranked[r][held] = np.take_along_axis(ids[rows][held], order, axis=1)
    gains = {r: ndcg_of_lists(reranked[r], target[rows], k) for r in grid}
    before = ndcg_of_lists(ids[rows], target[rows], k)
    ranker = fit(np.ones(len(rows), dtype=bool))  # the same recipe on every user
    ranker.rounds = max(gains, key=gains.get)  # the fewest rounds among the best
    after = gains[ranker.rounds]
    ranker.check = {"retrieval_ndcg": before, "ranker_ndcg": after, "users": len(rows), "rounds": ranker.rounds}
    ranker.use = after > before
    log.info("ranker: NDCG@%d %.4f -> %.4f cross-validated on %d users (%s, then %d rounds; by rounds: %s): %s",
             k, before, after, len(rows), ranker.prior or "no prior", ranker.rounds,
             {r: round(g, 4) for r, g in gains.items()}, "used" if ranker.use else "not used")  # fmt: skip
    return ranker


def retrieve(retriever, histories: list[np.ndarray], exclude: list[np.ndarray], m: int, also: np.ndarray | None = None):
    """(scores, ids) [u, m (+ also's width)]: each user's best ``m`` retrieved items, ``exclude``
    left out (users without a history get padding); with ``also`` ([u, e] catalogue indices, -1
    pads), those items too where not already there, each with its exact retrieval score, the
    whole ordered by that score."""
    from recsys_lib.recommend import top_n

    queries, fallback = retriever.user_queries(histories)
    width = m + (0 if also is None else also.shape[1])
    scores = np.full((len(histories), width), -np.inf, dtype=np.float32)
    ids = np.full((len(histories), width), -1, dtype=np.int64)
    rows = np.flatnonzero(~fallback)
    for start in range(0, len(rows), retriever.batch_size):
        batch = rows[start : start + retriever.batch_size]
        s, i = top_n(retriever.search, queries[batch], [exclude[r] for r in batch], m, len(retriever.items))
        if also is not None:
            extra = np.where((also[batch, :, None] == i[:, None, :]).any(2), -1, also[batch])
            extra_scores = _scores_of(queries[batch], retriever.items, extra)
            s = np.concatenate([s, np.where(extra >= 0, extra_scores, -np.inf)], axis=1)
            i = np.concatenate([i, extra], axis=1)
            order = np.argsort(-s, axis=1, kind="stable")
            s, i = np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)
        scores[batch], ids[batch] = s, i
    return scores, ids


def _scores_of(queries: np.ndarray, items: ItemVectors, ids: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Exact scores [u, e] of each user's index query [u, d + 1] against its items ``ids`` [u, e]
    (-1 pads: any score): the inner product with the items' index rows, [vector, bias], read
    from the vectors and biases themselves (building the index rows copied the catalogue twice
    for every batch re-ranked), a ``chunk`` of users at a time (gathering a whole batch's rows
    took hundreds of megabytes: re-ranking 8,192 users at 100k items, 19 s -> 15-17 s)."""
    out = np.empty(ids.shape, np.float32)
    d = items.vectors.shape[1]
    for start in range(0, len(ids), chunk):
        part = slice(start, start + chunk)
        safe = ids[part].clip(min=0)
        cosine = np.einsum("ud,ued->ue", queries[part, :d], items.vectors[safe])
        out[part] = cosine + queries[part, d:] * items.bias[safe]
    return out


def ranker_candidates(retriever, ease: EASE | UsersEASE | None, histories, exclude, m: int, ease_candidates: int):
    """(scores, ids) [u, m + ease_candidates]: what the ranker re-orders. The retriever's best
    ``m``, widened with EASE's best ``ease_candidates`` unseen items (scored by ``exclude``, the
    items each user has seen): a collaborative model's picks that the towers rank lower still
    reach the ranker, which weighs both (on random splits EASE's own top 200 holds 0.83 of the
    held-out items, the towers' 0.73)."""
    also = ease.top(exclude, ease_candidates) if ease is not None and ease_candidates else None
    if also is not None and retriever.banned is not None:
        also = np.where(np.isin(also, retriever.banned), -1, also)
    return retrieve(retriever, histories, exclude, m, also)


def fit_ranker(
    retriever,
    categories: np.ndarray,
    events: pd.DataFrame,
    pairs: pd.DataFrame,
    validation,
    cfg: RankSettings,
    k: int,
    seed: int,
) -> Ranker | None:
    """Train the ranker on the evaluation model's candidates for the validation events.

    Args:
        retriever: the evaluation model over its item vectors.
        categories: [n_items] first-category codes (``rules.first_categories``).
        events: the whole training side (item_id, timestamp): the features' event log, cut
            strictly before each validation event's time. Leaving other users' validation
            events out would make recent popularity lower here than where the ranker is used.
        pairs: (user_id, item_id) of the events the retriever trained on, validation events left
            out: the item-kNN neighbours and EASE weights (a user's own held-out item must not
            co-occur with the history it is ranked from).
        validation: a ``ValidationSet`` with times.
    """
    from recsys_lib.models.two_tower import PAD

    histories = [row[row != PAD] for row in validation.history]
    events = EventLog.from_frame(events, retriever.items.ids)
    neighbours, ease = item_to_item(pairs, retriever.items.ids, cfg.knn_neighbours, cfg.ease_items, cfg.ease_l2)
    scores, ids = ranker_candidates(retriever, ease, histories, validation.exclude, cfg.candidates, cfg.ease_candidates)
    ctx = RankingContext(retriever.items, categories, events, cfg.recent_days, validation.history.shape[1],
                         neighbours, ease)  # fmt: skip
    return train_ranker(ctx, histories, validation.time, validation.target, scores, ids, cfg, k, seed,
                        validation.exclude)  # fmt: skip

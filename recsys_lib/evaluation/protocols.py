"""The evaluation protocols: the candidate against the champion and the baselines, on one split.

Warm protocol (time-based holdout): each user's training side is ranked as recommend ranks live
users (the same retriever, seen-item exclusion and fallback) over the warm items; relevant items
are the user's held-out items not seen in training. Rankers: the model, the champion re-ranked
on the same split, most-popular, item-kNN and ALS (the last two tuned on the validation events,
each user's last training event, then refit on all training events). Segments: all users, light
users (at most ``LIGHT_USER_MAX_EVENTS`` training events).
Cold-item protocol: users rank only the cold items (whose every interaction was held out), with
the model's text-only vectors, a TF-IDF content baseline and random; plus the cold items' share
of the lists the model would serve (cold items allowed) against their share of the catalogue.
Tests: tests/unit/recsys_lib/evaluation/test_protocols.py (hand-made splits, a tiny model).
"""

from __future__ import annotations

import logging
import time
import typing
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_lib import baselines as bl
from recsys_lib.embedding import catalogue_indices
from recsys_lib.evaluation.metrics import (
    cold_item_slice,
    ndcg_per_user,
    paired_interval,
    ranking_metrics,
    segment,
    share_of,
)
from recsys_lib.evaluation.report import CATALOGUE, CHAMPION, ITEM_VECTORS, MODEL, EvaluationReport, Segment
from recsys_lib.ranker import EventLog, Ranker
from recsys_lib.recommend import rank_users
from recsys_lib.retrieval import Retriever, profile_scores
from recsys_lib.sampling import stable_sample
from recsys_lib.schema import DOCUMENT_COL, HISTORY_COL, ITEM_COL, SEEN_COL, USER_COL, VALIDATION_COL
from recsys_lib.settings import BaselineName

log = logging.getLogger(__name__)
LIGHT_USER_MAX_EVENTS = 5
MIN_COLD_ITEMS = 10  # fewer cold items than this make the cold-item numbers noise
RETRIEVAL_ONLY = "retrieval_only"  # the candidate without the ranker it serves with
WITH_RANKER = "with_ranker"  # the candidate with a ranker it does not serve (it lost its check)
# Searched coordinate-wise from the middle values (see recsys_lib.baselines.tune).
KNN_GRID = {"neighbours": [5, 10, 20, 50, 100, 200], "shrink": [0.0, 10.0, 50.0]}
EASE_GRID = {"l2": [100.0, 300.0, 1000.0]}
ALS_GRID = {"rank": [32, 64, 128], "reg": [0.01, 0.1, 1.0], "alpha": [5.0, 20.0, 40.0]}


@dataclass(frozen=True)
class EvaluationSplit:
    """One ds's split over the catalogue, as catalogue indices: what every protocol reads.

    Users are the training side's (sorted); row u of the matrices is ``users[u]``.
    """

    item_ids: pd.Index
    users: np.ndarray
    history_idx: list[np.ndarray]  # per user, oldest first (the user tower's input)
    seen_idx: list[np.ndarray]  # per user, every item seen in training (excluded from lists)
    train: sp.csr_matrix  # [users, items] every training event
    fit: sp.csr_matrix  # the same without the validation events (for tuning)
    validation_users: np.ndarray  # rows of users with a validation event ...
    validation_targets: np.ndarray  # ... and its item
    holdout: list[set[int]]  # per user, held-out items not seen in training
    cold_idx: np.ndarray  # sorted catalogue indices of the cold items
    cold_relevant: list[set[int]]  # per user, positions in cold_idx of the cold items they used
    documents: list[str]  # item documents in catalogue order

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_frames(
        cls,
        item_ids: pd.Index,
        histories: pd.DataFrame,
        train: pd.DataFrame,
        holdout: pd.DataFrame,
        cold_items: pd.DataFrame,
        cold_events: pd.DataFrame,
        documents: pd.DataFrame,
        max_users: int = 0,
        seed: int = 0,
    ) -> "EvaluationSplit":
        """From the features stage's tables: train_user_histories, interactions_train,
        interactions_holdout, cold_items, interactions_cold and item_documents. With
        ``max_users``, only a seeded sample of that many of the users with held-out or cold
        events is scored (see ``scored_sample``); every training event still fits the baselines."""
        holdout, cold_events = scored_sample(holdout, cold_events, max_users, seed)
        histories = histories.sort_values(USER_COL, kind="stable")
        users = histories[USER_COL].to_numpy()
        history_idx = catalogue_indices(item_ids, histories[HISTORY_COL])
        seen_idx = catalogue_indices(item_ids, histories[SEEN_COL])
        rows = pd.Index(users).get_indexer(train[USER_COL])
        cols = item_ids.get_indexer(train[ITEM_COL])
        ok = (rows >= 0) & (cols >= 0)
        is_val = train[VALIDATION_COL].to_numpy(bool) & ok
        cold_idx = item_ids.get_indexer(cold_items[ITEM_COL])
        cold_idx = np.sort(cold_idx[cold_idx >= 0])
        position = dict(zip(cold_idx.tolist(), range(len(cold_idx))))
        no_exclusion = [np.empty(0, np.int64)] * len(users)
        return cls(
            item_ids=item_ids,
            users=users,
            history_idx=history_idx,
            seen_idx=seen_idx,
            train=bl.interaction_matrix(rows[ok], cols[ok], len(users), len(item_ids)),
            fit=bl.interaction_matrix(rows[ok & ~is_val], cols[ok & ~is_val], len(users), len(item_ids)),
            validation_users=rows[is_val],
            validation_targets=cols[is_val],
            holdout=relevant_items(holdout, users, item_ids, seen_idx),
            cold_idx=cold_idx,
            cold_relevant=[
                {position[i] for i in r if i in position}
                for r in relevant_items(cold_events, users, item_ids, no_exclusion)
            ],
            documents=documents.set_index(ITEM_COL).loc[item_ids, DOCUMENT_COL].tolist(),
        )

    def popularity(self) -> np.ndarray:
        """[n_items] training events per item (the fallback and the most-popular baseline)."""
        return np.asarray(self.train.sum(axis=0)).ravel().astype(np.float64)

    def validation_exclude(self) -> list[np.ndarray]:
        return [self.fit[u].indices for u in self.validation_users]


def scored_sample(
    holdout: pd.DataFrame, cold_events: pd.DataFrame, max_users: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(holdout, cold_events) of at most ``max_users`` of the users with events in either (0:
    all), a ``stable_sample`` by user id: scoring costs users x items, and at a million users a
    sample of 100k measures NDCG to about 0.001 in a fraction of the time."""
    users = np.union1d(holdout[USER_COL].unique(), cold_events[USER_COL].unique())
    if max_users <= 0 or len(users) <= max_users:
        return holdout, cold_events
    chosen = users[stable_sample(users, max_users, seed)]
    log.info("scoring a stable sample of %d of the %d users with held-out events", max_users, len(users))
    return holdout[holdout[USER_COL].isin(chosen)], cold_events[cold_events[USER_COL].isin(chosen)]


def relevant_items(events: pd.DataFrame, users, item_index: pd.Index, seen_idx) -> list[set[int]]:
    """Per user (in ``users`` order): catalogue indices in ``events`` not seen in training."""
    grouped = events.groupby(USER_COL)[ITEM_COL].agg(list)
    lists = [grouped.get(u, []) for u in users]
    return [set(idx.tolist()) - set(seen.tolist()) for idx, seen in zip(catalogue_indices(item_index, lists), seen_idx)]


@dataclass(frozen=True)
class WarmUsers:
    """The warm protocol's users: those with a held-out item they had not seen in training."""

    rows: np.ndarray  # rows of the split
    relevant: list[set[int]]
    light: np.ndarray  # [len(rows)] bool: at most LIGHT_USER_MAX_EVENTS training events
    seen: list[np.ndarray]  # per user, seen in training: left out of their list
    # Left out of every list: the cold items, which have no holdout events by construction
    # (ranking them here would penalise a model that recommends new items; they are ranked in
    # their own protocol). One array for all users, not a copy in each user's exclusions.
    cold: np.ndarray

    @classmethod
    def of(cls, split: EvaluationSplit) -> "WarmUsers":
        rows = np.array([i for i, r in enumerate(split.holdout) if r], dtype=np.int64)
        light = np.diff(split.train.indptr)[rows] <= LIGHT_USER_MAX_EVENTS
        return cls(rows, [split.holdout[i] for i in rows], light, [split.seen_idx[i] for i in rows], split.cold_idx)


@dataclass(frozen=True)
class Baseline:
    """A baseline ranker: how to make one (``make(**params)``) and the grid it is tuned on."""

    make: Callable[..., object]
    grid: dict[str, Sequence] | None = None

    def lists(
        self, split: EvaluationSplit, warm: WarmUsers, depth: int, k: int, tune: bool = True
    ) -> tuple[np.ndarray, dict]:
        """(top-``depth`` lists of the warm users, the parameters used): tuned on NDCG@k of the
        validation events, or the middle of the grid when ``tune`` is false."""
        params = {}
        if self.grid is not None and not tune:
            params = {key: values[len(values) // 2] for key, values in self.grid.items()}
        elif self.grid is not None:
            params, _ = bl.tune(
                self.make, self.grid, split.fit, split.validation_users, split.validation_targets,
                split.validation_exclude(), k,
            )  # fmt: skip
        ranker = self.make(**params).fit(split.train)
        return bl.rank_users(ranker, warm.rows, warm.seen, depth, banned=warm.cold), params


IMPLICIT_ALS_GRID = {"factors": [32, 64, 128], "regularization": [0.01, 0.1, 1.0], "alpha": [5.0, 20.0, 40.0]}
IMPLICIT_BPR_GRID = {"factors": [64, 128, 256], "learning_rate": [0.005, 0.01, 0.05], "iterations": [100]}
BASELINES = typing.get_args(BaselineName)


def baselines(names: Sequence[str], spark_session: Callable[[], object], seed: int) -> dict[str, Baseline]:
    """The named baselines (``evaluate.baselines``): most-popular; item-kNN, EASE, Spark ALS and the
    ``implicit`` library's ALS and BPR, tuned on the validation events; cornac's BPR and BiVAE
    with the Microsoft Recommenders benchmark's settings. ``spark_session`` is called only when
    Spark ALS is asked for."""
    made = {
        "popularity": lambda: Baseline(bl.MostPopular),
        "item_knn": lambda: Baseline(bl.ItemKNN, KNN_GRID),
        "ease": lambda: Baseline(bl.EASE, EASE_GRID),
        "als": lambda: Baseline(partial(bl.ALS, spark_session(), seed=seed), ALS_GRID),
        "implicit_als": lambda: Baseline(partial(bl.Implicit, "als", seed=seed), IMPLICIT_ALS_GRID),
        "implicit_bpr": lambda: Baseline(partial(bl.Implicit, "bpr", seed=seed), IMPLICIT_BPR_GRID),
        "cornac_bpr": lambda: Baseline(lambda: bl.cornac_bpr(seed)),
        "cornac_bivae": lambda: Baseline(lambda: bl.cornac_bivae(seed)),
    }
    return {name: made[name]() for name in names}


def retriever_lists(
    retrievers: Sequence[Retriever], histories: list[np.ndarray], seen: list[np.ndarray], popularity, depth: int
) -> list[np.ndarray]:
    """Each retriever's top-``depth`` lists for these users, ``seen`` left out, ranked exactly as
    the recommend stage ranks; the retrievers share one model (``Retriever.without``), so the users
    are embedded once for all."""
    queries, fallback = retrievers[0].user_queries(histories)
    batch = retrievers[0].batch_size
    return [rank_users(r.search, queries, seen, popularity, depth, batch, fallback)[1] for r in retrievers]


@dataclass(frozen=True)
class Ranking:
    """What ranking the split's users like the served path needs beyond the retrievers."""

    categories: np.ndarray  # [n_items] first-category codes
    events: EventLog  # the training side's events
    times: np.ndarray  # [split users] each user's cut-off: their first held-out event's time
    histories: list[np.ndarray]  # [split users] their histories (catalogue indices, oldest first)
    pairs: pd.DataFrame | None = None  # (user_id, item_id) of the training side: the rankers' item-kNN


def ranked_lists(
    retriever: Retriever, ranker: Ranker, ranking: Ranking, rows: np.ndarray, exclude, fallback_lists, depth: int
) -> np.ndarray:
    """The retriever's candidates for split users ``rows`` re-ordered by ``ranker`` as of each
    user's cut-off, cut to ``depth``; users without candidates keep ``fallback_lists``."""
    histories = [ranking.histories[r] for r in rows]
    context = ranker.context(retriever.items, ranking.categories, ranking.events, ranking.pairs)
    _, ids = ranker.ranked(retriever, context, histories, ranking.times[rows], exclude, depth)
    ids = ids[:, :depth]
    empty = (ids < 0).all(axis=1)
    ids[empty] = fallback_lists[empty]
    return ids


def evaluate_candidate(
    split: EvaluationSplit,
    candidate: Retriever,
    champion: Retriever | None,
    baselines: dict[str, Baseline],
    ks: Sequence[int],
    seed: int,
    ds: str,
    model_version: str,
    tune_baselines: bool = True,
    ranking: Ranking | None = None,
    rankers: tuple[Ranker | None, Ranker | None] = (None, None),
) -> EvaluationReport:
    """Every protocol for one candidate; ``ks`` are the cut-offs (the first is the primary one).

    With ``ranking`` and ``rankers`` (the candidate's, the champion's), each model is measured on
    the path it serves: re-ranked when its ranker is used. The candidate's other path is shown
    too: ``retrieval_only`` when its ranker is used, ``with_ranker`` when it is not."""
    started = time.perf_counter()
    ks = tuple(ks)
    depth = max(ks)
    warm = WarmUsers.of(split)
    popularity = split.popularity()
    histories = [split.history_idx[i] for i in warm.rows]
    # What the served lists look like (cold items allowed) feeds the cold items' share below. The
    # warm lists leave the cold items out inside the index search (Retriever.without): excluding
    # thousands of items from each user's list afterwards would widen every search by as many.
    warm_candidate = candidate.without(split.cold_idx)
    model_lists, served_lists = retriever_lists([warm_candidate, candidate], histories, warm.seen, popularity, depth)
    lists = {MODEL: model_lists}
    if champion is not None:
        champion = champion.without(split.cold_idx)
        (lists[CHAMPION],) = retriever_lists([champion], histories, warm.seen, popularity, depth)
    candidate_ranker, champion_ranker = rankers if ranking is not None else (None, None)
    if candidate_ranker is not None:
        reranked = ranked_lists(warm_candidate, candidate_ranker, ranking, warm.rows, warm.seen, model_lists, depth)
        if candidate_ranker.use:
            lists[MODEL], lists[RETRIEVAL_ONLY] = reranked, model_lists
        else:
            lists[WITH_RANKER] = reranked
    if champion is not None and champion_ranker is not None and champion_ranker.use:
        lists[CHAMPION] = ranked_lists(champion, champion_ranker, ranking, warm.rows, warm.seen,
                                       lists[CHAMPION], depth)  # fmt: skip
    tuned = {}
    for name, baseline in baselines.items():
        t0 = time.perf_counter()
        lists[name], params = baseline.lists(split, warm, depth, ks[0], tune_baselines)
        if params:
            tuned[name] = params
        log.info("%s %s ranked in %.1fs", name, params or "", time.perf_counter() - t0)

    metrics = {name: ranking_metrics(lst, warm.relevant, split.n_items, ks) for name, lst in lists.items()}
    light = {}
    if warm.light.any():  # an empty segment reports nothing rather than zeros
        light = {
            name: ranking_metrics(*segment(lst, warm.relevant, warm.light), split.n_items, ks)
            for name, lst in lists.items()
        }
    n_light = int(warm.light.sum())
    model_ndcg = ndcg_per_user(lists[MODEL], warm.relevant, ks[0])
    gaps = {name: list(paired_interval(model_ndcg, ndcg_per_user(lst, warm.relevant, ks[0]), seed))
            for name, lst in lists.items() if name != MODEL}  # fmt: skip
    return EvaluationReport(
        ds=ds,
        model_version=model_version,
        ks=ks,
        all_users=Segment(f"all users (n={len(warm.rows)})", len(warm.rows), metrics),
        light_users=Segment(f"light users, <= {LIGHT_USER_MAX_EVENTS} training events (n={n_light})", n_light, light),
        cold_items=cold_item_segment(split, candidate, served_lists, ks[0], depth, seed),
        tuned=tuned,
        seconds=time.perf_counter() - started,
        gaps=gaps,
    )


def cold_item_segment(
    split: EvaluationSplit, candidate: Retriever, served_lists: np.ndarray, k: int, depth: int, seed: int
) -> Segment:
    """Users with history rank only the cold items: the model (text-only vectors), the model's
    item vectors used as content vectors (a user is the mean of their history's vectors, scored
    as ``PublishedTables.for_session`` scores from the published ``item_vectors`` alone), TF-IDF
    and random;
    and the cold items' share of the served lists against their share of the catalogue."""
    n_cold = len(split.cold_idx)
    if n_cold <= MIN_COLD_ITEMS:
        note = "too few cold items for this protocol (features.cold_item_fraction)"
        return Segment(f"cold items (n={n_cold}, users=0)", 0, {}, note)
    rows = [i for i, r in enumerate(split.cold_relevant) if r and len(split.history_idx[i])]
    results: dict[str, dict[str, float]] = {}
    if rows:
        histories = [split.history_idx[i] for i in rows]
        relevant = [split.cold_relevant[i] for i in rows]
        queries, _ = candidate.user_queries(histories)
        content = bl.TfidfContent(split.documents).fit(split.train)
        scores = {
            MODEL: candidate.score_items(queries, split.cold_idx),
            ITEM_VECTORS: profile_scores(candidate.items, candidate.temperature, histories, split.cold_idx),
            "tfidf": content.scores_for_histories(histories, items=split.cold_idx),
            "random": np.random.default_rng(seed).random((len(rows), n_cold)),
        }
        results = {name: cold_item_slice(s, relevant, k) for name, s in scores.items()}
    share = f"share_in_top_{depth}"
    results.setdefault(MODEL, {})[share] = share_of(served_lists, set(split.cold_idx.tolist()))
    results[CATALOGUE] = {share: n_cold / split.n_items}
    return Segment(f"cold items (n={n_cold}, users={len(rows)})", len(rows), results)

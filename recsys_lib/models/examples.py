"""What training learns from: (history -> next item) examples and the validation set, over
catalogue indices; and the words that describe a user's history (``interest_texts``), the
stand-in for what a user would say they like.

Tests: tests/unit/recsys_lib/models/test_examples.py (hand-written interactions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_lib.models.two_tower import PAD, history_matrix
from recsys_lib.sampling import stable_sample, stable_share
from recsys_lib.schema import HOLDOUT_COL, ITEM_COL, QUERY_COL, TIMESTAMP_COL, USER_COL, VALIDATION_COL, WEIGHT_COL


@dataclass(frozen=True)
class TrainingExamples:
    history: np.ndarray  # [n, L] int32 catalogue indices, right-aligned, PAD where empty
    target: np.ndarray  # [n] catalogue index of the next item
    weight: np.ndarray | None = None  # [n] the target event's weight; None: every example counts 1

    def __len__(self) -> int:
        return len(self.target)


@dataclass(frozen=True)
class ValidationSet:
    history: np.ndarray  # [u, L] each validation user's history before the held-out event
    target: np.ndarray  # [u] the held-out item
    exclude: list[np.ndarray]  # per user, the other items seen in training (not ranked)
    time: np.ndarray | None = None  # [u] epoch seconds of the held-out event (the ranker's cut-off)
    users: np.ndarray | None = None  # [u] user ids (what samples are drawn by); None: positions

    def __len__(self) -> int:
        return len(self.target)

    @property
    def keys(self) -> np.ndarray:
        """What samples and splits are drawn by: user ids, else positions."""
        return np.arange(len(self)) if self.users is None else self.users

    def subset(self, rows: np.ndarray) -> "ValidationSet":
        time = None if self.time is None else self.time[rows]
        users = None if self.users is None else self.users[rows]
        return ValidationSet(self.history[rows], self.target[rows], [self.exclude[r] for r in rows], time, users)

    def split(self, share: float, seed: int) -> tuple["ValidationSet", "ValidationSet"]:
        """(the rest, a ``share`` of the users, a ``stable_share`` by user id)."""
        taken = stable_share(self.keys, share, seed)
        return self.subset(np.flatnonzero(~taken)), self.subset(np.flatnonzero(taken))

    def sample(self, n: int, seed: int) -> "ValidationSet":
        """At most ``n`` users, a ``stable_sample`` by user id: scoring every user against the
        whole catalogue at each refresh costs users x items, too much at millions of each."""
        if n <= 0 or len(self) <= n:
            return self
        return self.subset(stable_sample(self.keys, n, seed))


@dataclass(frozen=True)
class TrainingData:
    """Everything the train stage feeds the model, over the catalogue ``item_ids``."""

    item_ids: pd.Index  # the catalogue; position = catalogue index
    id_vocab: pd.Index  # warm items (positives in training): they get an ID embedding
    examples: TrainingExamples
    validation: ValidationSet  # the events early stopping is scored on
    ranking: ValidationSet | None = None  # what the ranker learns from: other users unless rank.validation_share is 0


def _sequences(interactions: pd.DataFrame, item_ids: pd.Index) -> pd.DataFrame:
    df = interactions.copy()
    df["_item"] = item_ids.get_indexer(df[ITEM_COL])
    return df[df["_item"] >= 0].sort_values([USER_COL, TIMESTAMP_COL, ITEM_COL], kind="stable")


def build_examples(
    interactions: pd.DataFrame, item_ids: pd.Index, history_length: int, profile_share: float = 0.0, seed: int = 0
) -> TrainingExamples:
    """One example per event that has at least one earlier event of the same user, plus
    ``profile_share`` as many profile examples (see ``profile_examples``).

    Args:
        interactions: user_id, item_id, timestamp [, weight] rows (any order); an example
            weighs what its target event weighs (``features.event_weights`` times ``weight``).
        item_ids: the catalogue; position in it is the item's index. Unknown items are dropped.
        history_length: how many preceding items each example keeps (latest last).
    """
    columns = [USER_COL, ITEM_COL, TIMESTAMP_COL] + ([WEIGHT_COL] if WEIGHT_COL in interactions else [])
    df = _sequences(interactions[columns], item_ids)
    items = df["_item"].to_numpy(np.int64)
    users = df[USER_COL].to_numpy()
    n = len(items)
    if n == 0:
        return TrainingExamples(np.empty((0, history_length), np.int32), np.empty(0, np.int64))
    first = np.ones(n, dtype=bool)
    first[1:] = users[1:] != users[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    position = np.arange(n) - start
    rows = np.flatnonzero(position >= 1)
    # int32: catalogue indices fit, and at millions of users the matrix is the largest array.
    history = np.full((len(rows), history_length), PAD, dtype=np.int32)
    for k in range(1, history_length + 1):
        ok = position[rows] >= k
        history[ok, history_length - k] = items[rows[ok] - k]
    target = items[rows]
    weight = df[WEIGHT_COL].to_numpy(np.float64) if WEIGHT_COL in df else None
    if profile_share > 0:
        rng = np.random.default_rng(seed)
        count = np.bincount(np.cumsum(first) - 1)[np.cumsum(first) - 1]
        chosen = np.flatnonzero((count >= 2) & (rng.random(n) < profile_share))
        history = np.vstack([history, profile_examples(items, start, position, count, chosen, history_length, rng)])
        rows = np.concatenate([rows, chosen])
        target = items[rows]
    weight = weight[rows] if weight is not None and len(rows) else None
    if weight is not None and weight[0] > 0 and (weight == weight[0]).all():
        weight = None  # the plain mean, exactly as without weights
    return TrainingExamples(history, target, None if weight is None else relative_weights(weight))


def relative_weights(weight: np.ndarray) -> np.ndarray:
    """float32 weights with mean 1, computed in float64. The loss is a weighted mean, so only
    ratios count; any finite unit (seconds watched, an order's value, 1e300) then fits float32,
    where the raw values could overflow to inf and turn the loss into NaN."""
    top = weight.max()
    if top <= 0:
        return weight.astype(np.float32)
    scaled = weight / top
    return (scaled / scaled.mean()).astype(np.float32)


def profile_examples(
    items: np.ndarray,
    start: np.ndarray,
    position: np.ndarray,
    count: np.ndarray,
    rows: np.ndarray,
    history_length: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Histories [len(rows), L] for (the user's other items -> this item) examples.

    Next-item examples teach order; these teach taste: each event's item is predicted from up
    to ``history_length`` of the same user's *other* items, earlier and later ones alike (all of
    them when they fit, else a random draw), kept in time order. Where a random quarter of a
    user's items is what is asked for, or order carries little signal, this is the objective that
    fits (the bag-of-items view of Covington et al., 2016 and of autoencoder recommenders).

    Args:
        items, start, position, count: per event (grouped by user, time-sorted): its catalogue
            index, its user's first row, its position in the user's events, the user's count.
        rows: the events to build examples for (their users have at least 2 events).
    """
    n_other = count[rows] - 1
    draw = rng.integers(0, np.maximum(n_other, 1)[:, None], size=(len(rows), history_length))
    # Users whose other items fit take them all; the rest a draw with replacement, deduplicated.
    fits = n_other <= history_length
    ordinal = np.broadcast_to(np.arange(history_length), draw.shape)
    offset = np.where(fits[:, None], np.where(ordinal < n_other[:, None], ordinal, -1), draw)
    offset = np.where(offset >= position[rows][:, None], offset + 1, offset)  # skip the target itself
    offset = np.sort(offset, axis=1)
    offset[:, 1:][offset[:, 1:] == offset[:, :-1]] = -1
    offset = np.sort(offset, axis=1)  # PAD first: right-aligned, oldest first
    return np.where(offset >= 0, items[start[rows][:, None] + np.maximum(offset, 0)], PAD).astype(np.int32)


def build_validation(
    interactions: pd.DataFrame, item_ids: pd.Index, history_length: int
) -> tuple[pd.DataFrame, ValidationSet]:
    """Split training interactions into (events to train on, the validation set).

    Args:
        interactions: training interactions with a boolean ``is_validation`` column marking
            each user's held-out validation event (see features.mark_validation).
    """
    flag = interactions[VALIDATION_COL].to_numpy(bool)
    train, held = interactions[~flag], interactions[flag]
    seq = _sequences(train[[USER_COL, ITEM_COL, TIMESTAMP_COL]], item_ids)
    grouped = seq.groupby(USER_COL, sort=False)["_item"].agg(list)
    held = held[held[ITEM_COL].isin(item_ids)]
    histories = [np.asarray(grouped.get(u, []), dtype=np.int64) for u in held[USER_COL]]
    history = history_matrix(histories, history_length)
    keep = (history != PAD).any(axis=1)
    target = item_ids.get_indexer(held[ITEM_COL]).astype(np.int64)
    exclude = [np.unique(h) for h, k in zip(histories, keep) if k]
    time = held[TIMESTAMP_COL].to_numpy(np.int64)[keep]
    return train, ValidationSet(history[keep], target[keep], exclude, time, held[USER_COL].to_numpy()[keep])


def prepare_training_data(
    item_ids: pd.Index,
    interactions: pd.DataFrame,
    history_length: int,
    max_validation_users: int,
    seed: int,
    ranking_share: float = 0.0,
    profile_share: float = 0.0,
) -> TrainingData:
    """Examples, the validation events and the ID vocabulary from the training interactions.

    Args:
        item_ids: the catalogue in row order.
        interactions: user_id, item_id, timestamp, is_validation (the features stage's
            ``interactions_train``).
        max_validation_users: validation users early stopping scores (a ``stable_sample`` by user id).
        ranking_share: the share of validation users set aside for the ranker, so that no event
            both picks the model (early stopping) and teaches or judges the ranker (on events
            that chose it, the retrieval order looks better than it is); 0: the ranker learns
            from the early-stopping users' events (twice the data, a slightly flattered order).
    """
    train, validation = build_validation(interactions, item_ids, history_length)
    # Warm items get an ID embedding; the rest (cold, new) are known by their text alone.
    id_vocab = pd.Index(sorted(set(train[ITEM_COL]) & set(item_ids)), dtype=object)
    examples = build_examples(train, item_ids, history_length, profile_share, seed)
    if ranking_share > 0:
        validation, ranking = validation.split(ranking_share, seed)
        validation, ranking = validation.sample(max_validation_users, seed), ranking.sample(max_validation_users, seed)
    else:
        validation = ranking = validation.sample(max_validation_users, seed)
    return TrainingData(item_ids, id_vocab, examples, validation, ranking)


def prepare_serving_data(
    item_ids: pd.Index, interactions: pd.DataFrame, history_length: int, profile_share: float = 0.0, seed: int = 0
) -> TrainingData:
    """Examples and the ID vocabulary from every positive interaction up to ds (the features
    stage's ``interactions_all``): what the served model continues on. No validation set: the
    served model has seen everything, so it is measured through its evaluation twin."""
    id_vocab = pd.Index(sorted(set(interactions[ITEM_COL]) & set(item_ids)), dtype=object)
    examples = build_examples(interactions, item_ids, history_length, profile_share, seed)
    empty = ValidationSet(np.empty((0, history_length), np.int64), np.empty(0, np.int64), [], np.empty(0, np.int64))
    return TrainingData(item_ids, id_vocab, examples, empty)


def interest_texts(
    history_idx: list[np.ndarray], pairs: pd.DataFrame, item_ids: pd.Index, n_terms: int = 8
) -> list[str]:
    """What each user would say they like, from their history: the ``n_terms`` tags and
    categories (training pairs only) with the highest TF-IDF over the items of the history (a
    word on half the catalogue says little), most telling first, joined by ", "."""
    from scipy import sparse

    train = pairs[~pairs[HOLDOUT_COL]]
    rows = item_ids.get_indexer(train[ITEM_COL])
    train, rows = train[rows >= 0], rows[rows >= 0]
    codes, words = pd.factorize(train[QUERY_COL], sort=True)
    if not len(words):
        return [""] * len(history_idx)
    item_words = sparse.csr_matrix((np.ones(len(rows)), (rows, codes)), shape=(len(item_ids), len(words)))
    idf = np.log(len(item_ids) / (1.0 + np.asarray((item_words > 0).sum(axis=0)).ravel()))
    texts = []
    for start in range(0, len(history_idx), 1024):
        chunk = history_idx[start : start + 1024]
        indptr = np.concatenate([[0], np.cumsum([len(h) for h in chunk])])
        flat = np.concatenate(chunk) if indptr[-1] else np.zeros(0, np.int64)
        users = sparse.csr_matrix((np.ones(len(flat)), flat, indptr), shape=(len(chunk), len(item_ids)))
        weights = (users @ item_words).toarray() * np.maximum(idf, 0.0)
        best = np.argsort(-weights, axis=1, kind="stable")[:, :n_terms]
        for row, cols in zip(weights, best):
            texts.append(", ".join(words[c] for c in cols if row[c] > 0))
    return texts


def interest_pairs(
    interactions: pd.DataFrame, item_ids: pd.Index, pairs: pd.DataFrame, max_users: int, max_items: int, seed: int
) -> pd.DataFrame:
    """(query, item_id) pairs for the interests loss: for up to ``max_users`` users (a seeded
    sample), the words that describe their latest ``max_items`` items -> each of those items."""
    events = interactions[[USER_COL, ITEM_COL, TIMESTAMP_COL]].sort_values([USER_COL, TIMESTAMP_COL], kind="stable")
    events = events.groupby(USER_COL, sort=True).tail(max_items)
    users = events[USER_COL].unique()
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
        events = events[events[USER_COL].isin(users)]
    grouped = events.groupby(USER_COL, sort=True)[ITEM_COL].agg(list)
    histories = [item_ids.get_indexer(pd.Index(items, dtype=object)) for items in grouped]
    texts = interest_texts([h[h >= 0] for h in histories], pairs, item_ids)
    words = pd.Series(texts, index=grouped.index, name=QUERY_COL)
    out = events[[USER_COL, ITEM_COL]].merge(words, left_on=USER_COL, right_index=True)
    return out.loc[out[QUERY_COL] != "", [QUERY_COL, ITEM_COL]].reset_index(drop=True)

"""Business rules applied to the model's candidates before the top-N is cut (numpy, per batch).

From the ``[rules]`` settings:
  blocked items      never recommended, nor listed as similar (ids in the settings or a file)
  new-item boost     added to the score of catalogue items nobody has interacted with yet
  minimum score      model candidates below it are dropped (the list is topped up by popularity;
                     the score rules leave popularity-ranked rows alone: ``on_popularity``)
  category cap       at most N items of one category (an item's first category) per list
  diversity          maximal marginal relevance over the item vectors (``diversify``)
Candidates arrive as [q, k] (scores, catalogue indices) best first, -1 padded; rules keep that
shape so the caller's seen-item exclusion and truncation stay one code path.
Tests: tests/unit/recsys_lib/test_rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from recsys_lib.schema import CATEGORIES_COL, ITEM_COL
from recsys_lib.settings import RulesSettings

NO_CATEGORY = -1


@dataclass(frozen=True)
class BusinessRules:
    blocked: np.ndarray  # [n_items] bool
    is_new: np.ndarray  # [n_items] bool: no interaction up to ds
    category: np.ndarray  # [n_items] int, NO_CATEGORY where the item has none
    new_item_boost: float = 0.0
    min_score: float | None = None
    max_per_category: int = 0  # 0 = no cap
    diversity: float = 0.0  # MMR weight of novelty in [0, 1): 0 = the scores' order
    vectors: np.ndarray | None = field(default=None, repr=False)  # [n_items, d] unit vectors, for MMR
    candidate_factor: int = 3  # candidates fetched per slot when a rule may drop or reorder some

    @classmethod
    def none(cls, n_items: int) -> "BusinessRules":
        """No rules: candidates pass through unchanged."""
        return cls(np.zeros(n_items, bool), np.zeros(n_items, bool), np.full(n_items, NO_CATEGORY))

    def on_popularity(self) -> "BusinessRules":
        """The rules for popularity-ranked lists (the fallback and top-ups): the score rules
        (minimum score, new-item boost) are about the model's scores, a scale that popularity
        scores in [0, 1] do not share; blocked items and the category cap still apply."""
        return replace(self, new_item_boost=0.0, min_score=None)

    @property
    def drops_candidates(self) -> bool:
        return bool(self.blocked.any()) or self.min_score is not None or self.max_per_category > 0

    @property
    def diversifies(self) -> bool:
        return self.diversity > 0 and self.vectors is not None

    def depth(self, n: int) -> int:
        """How many candidates to fetch for ``n`` slots."""
        return n * self.candidate_factor if self.drops_candidates or self.diversifies else n

    def apply(self, scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blocked out, new items boosted and re-sorted, low scores out, categories capped."""
        valid = ids >= 0
        safe = ids.clip(min=0)
        scores = scores.astype(np.float32, copy=True)
        if self.new_item_boost:
            scores = np.where(valid & self.is_new[safe], scores + self.new_item_boost, scores)
            order = np.argsort(-np.where(valid, scores, -np.inf), axis=1, kind="stable")
            scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
            valid, safe = ids >= 0, ids.clip(min=0)
        keep = valid & ~self.blocked[safe]
        if self.min_score is not None:
            keep &= scores >= self.min_score
        if self.max_per_category > 0:
            keep &= _within_cap(np.where(keep, self.category[safe], NO_CATEGORY), keep, self.max_per_category)
        return np.where(keep, scores, -np.inf).astype(np.float32), np.where(keep, ids, -1)


def diversify(scores: np.ndarray, ids: np.ndarray, vectors: np.ndarray, diversity: float):
    """Maximal marginal relevance (Carbonell & Goldstein, 1998): each row's candidates re-ordered
    greedily by (1 - diversity) * relevance - diversity * (highest cosine to an item placed
    before it); relevance is the row's scores scaled to [0, 1]. Scores are kept, -1 pads last.

    Args:
        scores, ids: [q, k] candidates best first, -1 padded; vectors: [n_items, d] unit vectors.
    """
    q, k = ids.shape
    valid = ids >= 0
    finite = np.where(valid, scores, np.nan)
    low, high = np.nanmin(finite, axis=1, initial=np.inf), np.nanmax(finite, axis=1, initial=-np.inf)
    span = np.where(high > low, high - low, 1.0)
    relevance = np.where(valid, (scores - low[:, None]) / span[:, None], 0.0)
    v = vectors[ids.clip(min=0)] * valid[..., None]
    similarity = np.einsum("qkd,qjd->qkj", v, v)
    rows = np.arange(q)
    taken = ~valid
    closest = np.zeros((q, k))
    order = np.full((q, k), -1)
    for step in range(k):
        objective = np.where(taken, -np.inf, (1 - diversity) * relevance - diversity * closest)
        pick = objective.argmax(axis=1)
        live = np.isfinite(objective[rows, pick])
        order[live, step] = pick[live]
        taken[rows[live], pick[live]] = True
        closest[live] = np.maximum(closest[live], similarity[rows[live], pick[live]])
    filled = order >= 0
    safe = order.clip(min=0)
    new_ids = np.where(filled, np.take_along_axis(ids, safe, 1), -1)
    return np.where(filled, np.take_along_axis(scores, safe, 1), -np.inf).astype(np.float32), new_ids


def _within_cap(category: np.ndarray, keep: np.ndarray, cap: int) -> np.ndarray:
    """True where a kept candidate is among the first ``cap`` kept ones of its category in its row."""
    q, k = category.shape
    out = np.ones((q, k), dtype=bool)
    for row in range(q):
        counts: dict[int, int] = {}
        for col in np.flatnonzero(keep[row]):
            c = int(category[row, col])
            if c == NO_CATEGORY:
                continue
            counts[c] = counts.get(c, 0) + 1
            out[row, col] = counts[c] <= cap
    return out


def build_rules(
    cfg: RulesSettings,
    item_index: pd.Index,
    item_stats: pd.DataFrame,
    documents: pd.DataFrame,
    read_text,
    vectors: np.ndarray | None = None,
) -> BusinessRules:
    """The ``[rules]`` settings resolved against a catalogue.

    Args:
        item_index: catalogue item ids in row order.
        item_stats: item_id of items with interactions up to ds.
        documents: item_id, categories (list of strings).
        read_text: reads a URI or path to text (for ``rules.blocked_items_file``).
        vectors: [n_items, d] the model's unit item vectors (for ``rules.diversity``).
    """
    n = len(item_index)
    blocked_ids = set(cfg.blocked_items)
    if cfg.blocked_items_file:
        blocked_ids |= {line.strip() for line in blocked_items_text(cfg, read_text).splitlines() if line.strip()}
    blocked = np.asarray(pd.Index(item_index).isin(list(blocked_ids)), dtype=bool)
    is_new = ~np.asarray(pd.Index(item_index).isin(item_stats[ITEM_COL]), dtype=bool)
    category = first_categories(documents, item_index) if cfg.max_per_category > 0 else np.full(n, NO_CATEGORY)
    return BusinessRules(
        blocked=blocked,
        is_new=is_new,
        category=category,
        new_item_boost=cfg.new_item_boost,
        min_score=cfg.min_score,
        max_per_category=cfg.max_per_category,
        diversity=cfg.diversity,
        vectors=vectors,
    )


def first_categories(documents: pd.DataFrame, item_index: pd.Index) -> np.ndarray:
    """[n_items] a code of each item's first category, NO_CATEGORY where it has none.

    Args:
        documents: item_id, categories (lists of strings).
    """
    first = documents.set_index(ITEM_COL)[CATEGORIES_COL].reindex(item_index)
    names = [c[0] if c is not None and len(c) else None for c in first]
    codes, _ = pd.factorize(pd.Series(names), use_na_sentinel=True)
    return np.where(codes >= 0, codes, NO_CATEGORY).astype(np.int64)


def blocked_items_text(cfg: RulesSettings, read_text) -> str:
    """The text of ``rules.blocked_items_file``; a missing file is an error that names the setting."""
    from recsys_lib.errors import StorageError

    try:
        return read_text(cfg.blocked_items_file)
    except (StorageError, OSError) as e:
        raise StorageError(f"rules.blocked_items_file: {e}") from None


def read_rules(cfg: RulesSettings, storage, ds: str, item_index: pd.Index, vectors=None) -> BusinessRules:
    """``build_rules`` for the catalogue of ds, reading what it needs from ``storage``."""
    from recsys_lib.storage import FeatureTable

    return build_rules(
        cfg,
        item_index,
        storage.read_features(FeatureTable.ITEM_STATS, ds, columns=[ITEM_COL]),
        storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds, columns=[ITEM_COL, CATEGORIES_COL]),
        storage.read_text,
        vectors,
    )

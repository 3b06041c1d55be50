"""The evaluation report: what the evaluate stage measured, as one typed record.

Written once by evaluate (``runs/ds=<ds>/evaluation.json`` and the MLflow run's
``evaluation.json``), read back typed by whoever needs it: publish's quality gate, the published
manifest, ``recsys show`` and ``recsys versions``. MLflow's flat metric names
(``model.ndcg_at_10``, ``model.light.recall_at_20``, ``cold.tfidf.recall_at_10``) are derived from
it for the UI and never parsed back.
Tests: tests/unit/recsys_lib/evaluation/test_report.py.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

MODEL = "model"  # the candidate being evaluated
CHAMPION = "champion"  # the current champion, re-ranked on the candidate's split
ITEM_VECTORS = "item_vectors"  # the cold-item slice: the model's item vectors as content vectors
CATALOGUE = "catalogue"  # the cold-item slice's reference row (its share of the catalogue)
NOT_BASELINES = (MODEL, CHAMPION, "retrieval_only", "with_ranker")
SEGMENTS = ("all_users", "light_users", "cold_items", "search", "text_users")

Metrics = dict[str, float]


@dataclass(frozen=True)
class Segment:
    """One slice of users (or items) and every ranker's metrics on it."""

    title: str
    users: int
    rankers: dict[str, Metrics] = field(default_factory=dict)
    note: str = "none"  # printed instead of a table when no ranker was measured

    def get(self, ranker: str) -> Metrics | None:
        return self.rankers.get(ranker)


@dataclass(frozen=True)
class EvaluationReport:
    """One candidate model against the champion and the baselines, on one ds's split.

    Segments: ``all_users`` (the warm protocol), ``light_users`` (few training events),
    ``cold_items`` (users rank only items whose every interaction was held out), ``search``
    (held-out tags as queries) and ``text_users`` (users known only by words that describe their
    history; both in recsys_lib/evaluation/search.py).
    """

    ds: str
    model_version: str  # registered model label, e.g. recsys_two_tower/3
    ks: tuple[int, ...]  # the first is the primary cut-off (the gate's)
    all_users: Segment
    light_users: Segment
    cold_items: Segment
    tuned: dict[str, dict[str, Any]] = field(default_factory=dict)  # baseline -> chosen parameters
    seconds: float = 0.0
    search: Segment = field(default_factory=lambda: Segment("search", 0, {}, "not measured"))
    text_users: Segment = field(default_factory=lambda: Segment("users described in words", 0, {}, "not measured"))
    # ranker -> [model minus ranker, 95% low, 95% high] in the primary metric on all users
    # (a paired bootstrap over the users): whether a gap is more than noise.
    gaps: dict[str, list[float]] = field(default_factory=dict)
    split: str = ""  # the holdout split that ran (features.split, "auto" resolved); "" before it was recorded
    # The split the champion's evaluation model trained under, when it differs: that model may
    # have trained on tonight's holdout, so it is not compared (nor its recorded numbers).
    champion_split: str = ""

    @property
    def primary_metric(self) -> str:
        """The metric the quality gate compares: NDCG at the primary cut-off."""
        return f"ndcg_at_{self.ks[0]}"

    def model_metrics(self, ranker: str = MODEL) -> Metrics | None:
        """A ranker's metrics on all users."""
        return self.all_users.get(ranker)

    def best_baseline(self) -> str | None:
        baselines = [n for n in self.all_users.rankers if n not in NOT_BASELINES]
        return max(baselines, key=lambda n: self.all_users.rankers[n][self.primary_metric], default=None)

    # Renderings.
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluationReport":
        segments = {name: Segment(**data[name]) for name in SEGMENTS if name in data}
        rest = {k: v for k, v in data.items() if k not in segments}
        return cls(**{**rest, "ks": tuple(rest["ks"]), **segments})

    def mlflow_metrics(self) -> dict[str, float]:
        """Flat names for the MLflow UI: ``<ranker>.<metric>``, ``<ranker>.light.<metric>``,
        ``cold.<ranker>.<metric>``, ``search.<ranker>.<metric>``, ``text_users.<ranker>.<metric>``."""
        flat = {f"{r}.{m}": v for r, ms in self.all_users.rankers.items() for m, v in ms.items()}
        flat |= {f"{r}.light.{m}": v for r, ms in self.light_users.rankers.items() for m, v in ms.items()}
        flat |= {f"cold.{r}.{m}": v for r, ms in self.cold_items.rankers.items() for m, v in ms.items()}
        flat |= {f"search.{r}.{m}": v for r, ms in self.search.rankers.items() for m, v in ms.items()}
        flat |= {f"text_users.{r}.{m}": v for r, ms in self.text_users.rankers.items() for m, v in ms.items()}
        return {**flat, "evaluate.seconds": self.seconds}

    def mlflow_tags(self) -> dict[str, str]:
        return {f"baseline.{name}": json.dumps(params) for name, params in self.tuned.items()}

    def to_text(self) -> str:
        """The segments as fixed-width tables, one row per ranker."""
        k, depth = self.ks[0], max(self.ks)
        columns = [f"{m}_at_{c}" for c in self.ks for m in ("recall", "ndcg")]
        columns += [f"{m}_at_{k}" for m in ("map", "precision", "coverage")] + ["users"]
        cold_columns = [f"recall_at_{k}", f"ndcg_at_{k}", f"share_in_top_{depth}"]
        search_columns = [f"{m}_at_{c}" for c in self.ks for m in ("recall", "ndcg")] + ["users"]
        parts = []
        tables = ((self.all_users, columns), (self.light_users, columns), (self.cold_items, cold_columns),
                  (self.search, search_columns), (self.text_users, search_columns))  # fmt: skip
        for segment, cols in tables:
            if segment.rankers:
                parts.append(format_table(segment.rankers, cols, segment.title))
            else:
                parts.append(f"{segment.title}: {segment.note}")
            if segment is self.all_users and self.gaps:
                parts.append(self.gaps_text())
        return "\n\n".join(parts)

    def gaps_text(self) -> str:
        """The model's lead over each ranker on all users, with its 95% bootstrap interval."""
        title = f"model minus, {self.primary_metric} (95% interval, paired bootstrap over users)"
        width = max([len(title)] + [len(r) for r in self.gaps]) + 2
        lines = [f"{title:<{width}}{'gap':>10}{'low':>10}{'high':>10}"]
        for name, (gap, low, high) in self.gaps.items():
            verdict = "ahead" if low > 0 else "behind" if high < 0 else "within noise"
            lines.append(f"{name:<{width}}{gap:>+10.4f}{low:>+10.4f}{high:>+10.4f}  {verdict}")
        return "\n".join(lines)


def format_table(rows: dict[str, Metrics], columns: Sequence[str], title: str) -> str:
    """A fixed-width text table: one row per ranker, one column per metric (counts as integers)."""
    width = max([len(title)] + [len(r) for r in rows]) + 2
    cell = max([10] + [len(c) + 2 for c in columns])
    lines = [f"{title:<{width}}" + "".join(f"{c:>{cell}}" for c in columns)]
    for name, metrics in rows.items():
        cells = "".join(_cell(metrics.get(c), cell) for c in columns)
        lines.append(f"{name:<{width}}" + cells)
    return "\n".join(lines)


def format_value(value: float | None) -> str:
    """A metric as the tables print it: counts as integers, rates to four decimals, '-' if none."""
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):d}"
    return f"{value:.4f}"


def _cell(value: float | None, width: int) -> str:
    return f"{format_value(value):>{width}}"

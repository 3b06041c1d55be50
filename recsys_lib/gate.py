"""The quality gate: may the candidate model replace the champion?

The candidate's primary metric (NDCG at the first ``evaluate.k``) may be at most
``publish.max_ndcg_drop`` below the champion's. Both sides come from the candidate's typed
``EvaluationReport``: the champion as re-ranked on the candidate's split when evaluate could do
that, else the champion's own recorded report (an older, incompatible checkpoint).
Tests: tests/unit/recsys_lib/test_gate.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys_lib.evaluation.report import CHAMPION, MODEL, EvaluationReport, Metrics

SAME_SPLIT = "same split"
RECORDED = "champion's recorded evaluation (could not re-evaluate it)"
NO_CHAMPION = "no champion"


@dataclass(frozen=True)
class GateDecision:
    refusal: str | None  # None: the candidate may replace the champion
    basis: str  # where the champion's numbers came from

    @property
    def passed(self) -> bool:
        return self.refusal is None


def quality_gate(
    candidate: Metrics, champion: Metrics | None, max_drop: float, metric: str, shown: tuple[str, ...] = ()
) -> str | None:
    """None when the candidate may replace the champion, else the reason it may not.

    Both dicts hold metrics measured on the same split; the reason quotes ``metric`` and the
    ``shown`` ones for both sides.
    """
    if champion is None or metric not in champion:
        return None
    if metric not in candidate:
        return f"the candidate has no {metric}: run evaluate first"
    floor = champion[metric] * (1 - max_drop)
    if candidate[metric] >= floor:
        return None
    compared = [m for m in (metric, *shown) if m in candidate and m in champion]
    numbers = "; ".join(
        f"{m}: candidate {candidate[m]:.4f}, champion {champion[m]:.4f}" for m in dict.fromkeys(compared)
    )
    return f"{metric} is below the champion's minus the allowed {max_drop:.0%} ({floor:.4f}). {numbers}"


def decide(report: EvaluationReport, champion_report: EvaluationReport | None, max_drop: float) -> GateDecision:
    """The gate for the candidate of ``report``.

    Args:
        champion_report: the champion's own report, used only when ``report`` has no champion row
            (None: there is no champion, or it has no report).
    """
    k = report.ks[0]
    shown = (f"ndcg_at_{k}", *[f"recall_at_{c}" for c in report.ks], f"map_at_{k}", f"coverage_at_{k}")
    candidate = report.model_metrics(MODEL) or {}
    same_split = report.model_metrics(CHAMPION)
    if same_split is not None:
        incumbent, basis = same_split, SAME_SPLIT
    elif champion_report is not None:
        incumbent, basis = champion_report.model_metrics(MODEL), RECORDED
    else:
        incumbent, basis = None, NO_CHAMPION
    return GateDecision(quality_gate(candidate, incumbent, max_drop, report.primary_metric, shown), basis)

"""The model quality gate, on hand-made metric sets and evaluation reports."""

import pytest

from recsys_lib.gate import NO_CHAMPION, RECORDED, SAME_SPLIT, decide, quality_gate
from tests.conftest import evaluation_report

CHAMPION = {"ndcg_at_10": 0.20, "recall_at_20": 0.30}
SHOWN = ("recall_at_20",)


def test_a_candidate_within_the_tolerance_passes():
    assert quality_gate({"ndcg_at_10": 0.191, "recall_at_20": 0.1}, CHAMPION, 0.05, "ndcg_at_10") is None
    assert quality_gate({"ndcg_at_10": 0.25}, CHAMPION, 0.0, "ndcg_at_10") is None


def test_a_worse_candidate_is_refused_with_both_sets_of_numbers():
    reason = quality_gate({"ndcg_at_10": 0.15, "recall_at_20": 0.28}, CHAMPION, 0.05, "ndcg_at_10", SHOWN)
    assert reason is not None
    assert "(0.1900)" in reason  # the floor: 0.20 minus 5%
    assert "ndcg_at_10: candidate 0.1500, champion 0.2000" in reason
    assert "recall_at_20: candidate 0.2800, champion 0.3000" in reason


def test_no_champion_means_nothing_to_beat():
    assert quality_gate({"ndcg_at_10": 0.0}, None, 0.05, "ndcg_at_10") is None


def test_a_candidate_without_metrics_is_refused():
    assert "run evaluate first" in quality_gate({}, CHAMPION, 0.05, "ndcg_at_10")


@pytest.mark.parametrize(
    "champion_row, recorded, basis, passes",
    [
        # evaluate re-ran the champion on the candidate's split: those numbers are used
        ({"ndcg_at_10": 0.104}, {"ndcg_at_10": 0.9}, SAME_SPLIT, True),
        ({"ndcg_at_10": 0.2}, {"ndcg_at_10": 0.0}, SAME_SPLIT, False),
        # it could not: the champion's own recorded evaluation is the fallback
        (None, {"ndcg_at_10": 0.9}, RECORDED, False),
        (None, None, NO_CHAMPION, True),
    ],
)
def test_the_gate_prefers_the_champion_on_the_same_split(champion_row, recorded, basis, passes):
    report = evaluation_report({"ndcg_at_10": 0.1, "recall_at_10": 0.2}, champion=champion_row)
    champion_report = None if recorded is None else evaluation_report(recorded, model_version="m/1")
    decision = decide(report, champion_report, max_drop=0.05)
    assert decision.basis == basis and decision.passed is passes
    if not passes:
        assert decision.refusal.startswith("ndcg_at_10 is below the champion's minus the allowed 5%")


def test_the_gate_metric_follows_the_primary_cut_off():
    report = evaluation_report({"ndcg_at_5": 0.1, "ndcg_at_10": 0.9}, champion={"ndcg_at_5": 0.2, "ndcg_at_10": 0.1},
                               ks=(5, 10))  # fmt: skip
    assert report.primary_metric == "ndcg_at_5"
    assert decide(report, None, 0.05).refusal.startswith("ndcg_at_5 is below")

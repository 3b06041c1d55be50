"""The model quality gate of the publish stage, on hand-made metric sets."""

import pytest

from jobs.publish import gate_metrics, quality_gate

CHAMPION = {"ndcg_at_10": 0.20, "recall_at_20": 0.30}


def test_a_candidate_within_the_tolerance_passes():
    assert quality_gate({"ndcg_at_10": 0.191, "recall_at_20": 0.1}, CHAMPION, max_drop=0.05) is None
    assert quality_gate({"ndcg_at_10": 0.25}, CHAMPION, max_drop=0.0) is None


def test_a_worse_candidate_is_refused_with_both_sets_of_numbers():
    reason = quality_gate({"ndcg_at_10": 0.15, "recall_at_20": 0.28}, CHAMPION, max_drop=0.05)
    assert reason is not None
    assert "(0.1900)" in reason  # the floor: 0.20 minus 5%
    assert "ndcg_at_10: candidate 0.1500, champion 0.2000" in reason
    assert "recall_at_20: candidate 0.2800, champion 0.3000" in reason


def test_no_champion_means_nothing_to_beat():
    assert quality_gate({"ndcg_at_10": 0.0}, None, 0.05) is None


def test_a_candidate_without_metrics_is_refused():
    assert "run evaluate first" in quality_gate({}, CHAMPION, 0.05)


@pytest.mark.parametrize(
    "candidate_run, champion_run, basis, incumbent",
    [
        # evaluate re-ran the champion on the candidate's split: those numbers are used
        ({"model.ndcg_at_10": 0.1, "champion.ndcg_at_10": 0.2}, {"model.ndcg_at_10": 0.9}, "same split", 0.2),
        # it could not: the champion's own recorded numbers are the fallback
        ({"model.ndcg_at_10": 0.1}, {"model.ndcg_at_10": 0.9}, "recorded", 0.9),
        ({"model.ndcg_at_10": 0.1}, None, "no champion", None),
    ],
)
def test_gate_metrics_prefers_the_same_split(candidate_run, champion_run, basis, incumbent):
    candidate, champion, why = gate_metrics(
        {**candidate_run, "model.light.ndcg_at_10": 0.5, "cold.model.recall_at_10": 0.3}, champion_run
    )
    assert candidate == {"ndcg_at_10": 0.1}  # segment metrics are not mixed in
    assert basis in why
    assert (champion or {}).get("ndcg_at_10") == incumbent

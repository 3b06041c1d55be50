"""The typed evaluation report: written once, read back the same, rendered for MLflow and people."""

import json

from recsys_lib.evaluation.report import EvaluationReport, Segment

REPORT = EvaluationReport(
    ds="2026-01-01",
    model_version="m/3",
    ks=(10, 20),
    all_users=Segment(
        "all users (n=2)",
        2,
        {
            "model": {"ndcg_at_10": 0.3, "recall_at_20": 0.5, "users": 2.0},
            "popularity": {"ndcg_at_10": 0.1, "recall_at_20": 0.2, "users": 2.0},
            "als": {"ndcg_at_10": 0.2, "recall_at_20": 0.4, "users": 2.0},
        },
    ),
    light_users=Segment("light users (n=0)", 0),
    cold_items=Segment("cold items (n=3, users=1)", 1, {"model": {"recall_at_10": 1.0}}),
    tuned={"als": {"rank": 32}},
    seconds=1.5,
    gaps={"popularity": [0.2, 0.1, 0.3], "als": [0.1, -0.05, 0.25]},
)


def test_json_roundtrip_is_exact():
    assert EvaluationReport.from_dict(json.loads(json.dumps(REPORT.to_dict()))) == REPORT


def test_names_for_mlflow_and_the_best_baseline():
    metrics = REPORT.mlflow_metrics()
    assert metrics["model.ndcg_at_10"] == 0.3 and metrics["cold.model.recall_at_10"] == 1.0
    assert metrics["evaluate.seconds"] == 1.5 and not any(".light." in k for k in metrics)
    assert REPORT.mlflow_tags() == {"baseline.als": '{"rank": 32}'}
    assert REPORT.best_baseline() == "als" and REPORT.primary_metric == "ndcg_at_10"


def test_text_tables_and_empty_segments():
    text = REPORT.to_text()
    assert text.splitlines()[0].startswith("all users (n=2)") and "recall_at_20" in text.splitlines()[0]
    assert "light users (n=0): none" in text
    model_row = next(line for line in text.splitlines() if line.startswith("model"))
    assert model_row.split()[1:3] == ["-", "0.3000"]  # recall_at_10 not measured, ndcg_at_10

    gaps = text.split("model minus, ndcg_at_10")[1].splitlines()
    assert gaps[1].split() == ["popularity", "+0.2000", "+0.1000", "+0.3000", "ahead"]
    assert gaps[2].split()[-3:] == ["+0.2500", "within", "noise"]

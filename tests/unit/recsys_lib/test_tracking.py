"""MLflow runs, the registry and its aliases, checkpoints and evaluation reports, on a real
SQLite-backed store."""

import pytest

from recsys_lib.errors import MissingInput
from recsys_lib.tracking import CANDIDATE, CHAMPION, Tracker, code_version
from tests.conftest import evaluation_report


def test_runs_registry_and_aliases(settings, tmp_path):
    tracker = Tracker(settings)
    run_id = tracker.start_run("train 2026-01-01", {"ds": "2026-01-01", "fingerprint": "abc"})
    tracker.log_params(run_id, {"train.max_steps": 3})
    tracker.log_metrics(run_id, {"model.ndcg_at_10": 0.25})
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "weights.safetensors").write_bytes(b"w")
    tracker.log_artifacts(run_id, checkpoint, "model")
    tracker.finish_run(run_id)

    assert tracker.find_finished_run({"ds": "2026-01-01", "fingerprint": "abc"}) == run_id
    assert tracker.find_finished_run({"ds": "2026-01-01", "fingerprint": "other"}) is None
    mv = tracker.register_model(run_id, {"ds": "2026-01-01"})
    assert mv.version == "1" and mv.label == f"{settings.tracking.registered_model}/1"
    assert tracker.alias(CHAMPION) is None
    tracker.set_alias(CANDIDATE, mv.version)
    assert tracker.alias(CANDIDATE).run_id == run_id
    assert tracker.version_for_run(run_id).version == "1"
    assert tracker.run_metrics(run_id)["model.ndcg_at_10"] == 0.25
    folder = tracker.download_model(mv.version)
    assert (folder / "weights.safetensors").read_bytes() == b"w"
    assert tracker.download_model(mv.version) == folder  # cached
    assert code_version()


def test_resolve_and_evaluation_reports(settings):
    tracker = Tracker(settings)
    with pytest.raises(MissingInput, match="no 'candidate' version .*: run the train stage first"):
        tracker.resolve(None)
    run_id = tracker.start_run("train", {"ds": "2026-01-01"})
    tracker.finish_run(run_id)
    mv = tracker.register_model(run_id, {})
    tracker.set_alias(CANDIDATE, mv.version)
    assert tracker.resolve(None) == mv == tracker.resolve(mv.version)
    assert tracker.evaluation_of(run_id) is None
    report = evaluation_report({"ndcg_at_10": 0.25, "recall_at_10": 0.5}, champion={"ndcg_at_10": 0.2})
    tracker.log_evaluation(run_id, report)
    assert tracker.evaluation_of(run_id) == report
    metrics = tracker.run_metrics(run_id)
    assert metrics["model.ndcg_at_10"] == 0.25 and metrics["champion.ndcg_at_10"] == 0.2

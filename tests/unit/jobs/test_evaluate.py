"""What the evaluate stage compares the candidate with."""

from jobs.evaluate import _champion_split
from recsys_lib.tracking import CHAMPION, Tracker


def register(tracker: Tracker, tmp_path, n: int, params: dict):
    run_id = tracker.start_run(f"train {n}", {"ds": f"2026-01-0{n}"})
    tracker.log_params(run_id, params)
    (tmp_path / f"ckpt{n}").mkdir()
    (tmp_path / f"ckpt{n}" / "w").write_bytes(b"w")
    tracker.log_artifacts(run_id, tmp_path / f"ckpt{n}", "model")
    tracker.finish_run(run_id)
    return tracker.register_model(run_id, {})


def test_a_champion_trained_on_another_split_is_not_compared(settings, tmp_path):
    tracker = Tracker(settings)
    older = register(tracker, tmp_path, 1, {})  # trained before the split was recorded
    champion = register(tracker, tmp_path, 2, {"data.split": "user_chrono"})
    candidate = register(tracker, tmp_path, 3, {"data.split": "global_time"})
    tracker.set_alias(CHAMPION, champion.version)
    # Trained on each user's first 80%, it may have seen tonight's global-time holdout.
    assert _champion_split(tracker, candidate, "global_time") == "user_chrono"
    assert _champion_split(tracker, candidate, "user_chrono") == ""
    assert _champion_split(tracker, champion, "global_time") == ""  # the candidate is the champion
    assert _champion_split(tracker, candidate, "") == ""  # tonight's unknown (features of an older release)
    tracker.set_alias(CHAMPION, older.version)
    assert _champion_split(tracker, candidate, "global_time") == ""  # unknown: compared as before

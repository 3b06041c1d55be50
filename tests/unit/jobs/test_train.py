"""Where tonight's evaluation model starts from: the champion's evaluation model, never the
served one (which continued on the events tonight's evaluation holds out)."""

from jobs.train import _warm_start, _warm_start_champion
from recsys_lib.tracking import CHAMPION, Tracker


def register(tracker, tmp_path, folders):
    run_id = tracker.start_run("train", {})
    for name in folders:
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "two_tower.json").write_text(name)
    tracker.log_artifacts(run_id, tmp_path)
    tracker.finish_run(run_id)
    return tracker.register_model(run_id, {})


def test_warm_start_from_the_champions_evaluation_model(settings, tmp_path):
    tracker = Tracker(settings)
    champion = register(tracker, tmp_path / "new", ["model", "evaluation_model"])
    assert (_warm_start(tracker, champion) / "two_tower.json").read_text() == "evaluation_model"
    assert _warm_start(tracker, None) is None


def test_a_champion_without_an_evaluation_model_is_not_a_warm_start(settings, tmp_path):
    tracker = Tracker(settings)
    older = register(tracker, tmp_path / "old", ["model"])  # registered before evaluation models existed
    assert _warm_start(tracker, older) is None


def test_no_warm_start_from_a_champion_that_may_have_learned_tonights_holdout(settings, tmp_path):
    tracker = Tracker(settings)
    run_id = tracker.start_run("train", {})
    tracker.log_params(run_id, {"data.split": "user_chrono"})
    (tmp_path / "ckpt" / "model").mkdir(parents=True)
    (tmp_path / "ckpt" / "model" / "two_tower.json").write_text("model")
    tracker.log_artifacts(run_id, tmp_path / "ckpt")
    tracker.finish_run(run_id)
    champion = tracker.register_model(run_id, {"ds": "2026-01-02"})
    tracker.set_alias(CHAMPION, champion.version)
    assert _warm_start_champion(tracker, False, "2026-01-03", "user_chrono").version == champion.version
    assert _warm_start_champion(tracker, True, "2026-01-03", "user_chrono") is None  # train.full_retrain
    assert _warm_start_champion(tracker, False, "2026-01-01", "user_chrono") is None  # a backfill
    assert _warm_start_champion(tracker, False, "2026-01-03", "global_time") is None  # another split

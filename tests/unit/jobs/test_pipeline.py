"""The stage list and the run parameters every entry point shares."""

import pytest

from jobs.pipeline import MODEL_STAGES, STAGES, run_stage, settings_for_run


def test_stages_in_order_and_the_ones_that_take_a_model_version():
    assert STAGES[:3] == ("ingest", "features", "train") and STAGES[-1] == "publish"
    assert set(MODEL_STAGES) == set(STAGES[3:])


def test_run_parameters_override_their_settings_and_none_keeps_them(settings):
    tuned = settings_for_run({"top_n": 7, "force_publish": True, "full_retrain": None, "unrelated": 1}, settings)
    assert (tuned.recommend.top_n, tuned.publish.force) == (7, True)
    assert tuned.train.full_retrain == settings.train.full_retrain


def test_an_unknown_stage_is_refused(settings):
    with pytest.raises(ValueError, match="unknown stage 'rank'; stages: ingest, features"):
        run_stage("rank", "2026-01-01", settings=settings)

"""The nightly flow as an ordered list of stages: the one place that lists them.

The Airflow DAG runs one task per stage through ``run_stage`` (tests/dags checks that its tasks
are these stages), ``recsys run`` runs them all in one process through ``run_all``, and the
benchmark runs each as its own process. This is the composition root: the only module that
imports the stage jobs.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from typing import Any, Mapping

from recsys_lib.settings import Settings, load_settings

log = logging.getLogger(__name__)

STAGES = ("ingest", "features", "train", "embed_items", "build_index", "recommend", "evaluate", "publish")
# Stages after train take the model version train registered.
MODEL_STAGES = ("embed_items", "build_index", "recommend", "evaluate", "publish")

# Run parameters (Airflow params, CLI flags) and the settings they override.
PARAM_SETTINGS = {
    "full_retrain": "train.full_retrain",
    "top_n": "recommend.top_n",
    "similar_n": "recommend.similar_n",
    "force_publish": "publish.force",
    "backfill": "publish.backfill",
    "max_train_steps": "train.max_steps",
}


def settings_for_run(params: Mapping[str, Any] | None = None, base: Settings | None = None) -> Settings:
    """Settings with the run's parameters applied; unset (None) parameters keep the settings."""
    overrides = {PARAM_SETTINGS[k]: v for k, v in (params or {}).items() if k in PARAM_SETTINGS and v is not None}
    if base is not None:
        return base.with_overrides(overrides)
    return load_settings(overrides=overrides)


def run_stage(
    stage: str,
    ds: str,
    params: Mapping[str, Any] | None = None,
    model_version: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run one stage for ``ds`` and return its summary (URIs and counts, never data)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    settings = settings_for_run(params, settings)
    module = importlib.import_module(f"jobs.{stage}")
    started = dt.datetime.now(dt.timezone.utc)
    if stage in MODEL_STAGES:
        result = module.run(settings, ds, model_version=model_version)
    else:
        result = module.run(settings, ds)
    _record(settings, stage, ds, started, result)
    return result


def _record(settings: Settings, stage: str, ds: str, started: dt.datetime, result: dict[str, Any]) -> None:
    """The stage's seconds and summary beside the run's outputs, for the run report."""
    from recsys_lib.storage import STAGES_DIR, Storage

    seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    record = {"stage": stage, "started_at": started.isoformat(timespec="milliseconds"), "seconds": seconds,
              "result": result}  # fmt: skip
    Storage(settings).write_json(Storage.run_output(f"{STAGES_DIR}/{stage}.json", ds), record)


# What a benchmark needs: evaluate embeds and indexes the evaluation models itself.
EVALUATION_STAGES = ("ingest", "features", "train", "evaluate")


def run_all(
    settings: Settings, ds: str, params: Mapping[str, Any] | None = None, stages: tuple[str, ...] = STAGES
) -> dict[str, dict[str, Any]]:
    """Every stage (or the given ones) in order, in this process."""
    results: dict[str, dict[str, Any]] = {}
    model_version = None
    for stage in [s for s in STAGES if s in stages]:
        log.info("stage %s for %s", stage, ds)
        results[stage] = run_stage(stage, ds, params, model_version, settings)
        if stage == "train":
            model_version = results[stage]["model_version"]
    return results

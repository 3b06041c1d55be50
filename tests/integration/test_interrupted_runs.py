"""A nightly run killed in the middle of every stage (SIGKILL, as an OOM killer or a lost worker
would) and retried stage by stage, as Airflow retries a task, publishes exactly the bytes of an
uninterrupted run; until it completes, readers see nothing new.

Each stage is its own process (``python -m jobs.<stage>``), as each is its own Airflow task.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jobs.pipeline import STAGES
from recsys_lib.data import land_raw_drop, synthetic
from recsys_lib.publish import read_latest
from recsys_lib.settings import load_settings
from recsys_lib.storage import Storage
from tests.conftest import ROOT, TINY_TRAIN, settings_toml

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def stage_process(stage: str, ds: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", f"jobs.{stage}", "--ds", ds],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, stage: str) -> None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{stage}:\n{out[-3000:]}"


def published(settings) -> dict:
    """What a reader can see: the live version and the bytes of every file it lists."""
    store = Storage(settings).published
    manifest = read_latest(store)
    if manifest is None:
        return {}
    files = {f["key"]: f["sha256"] for t in manifest["tables"].values() for f in t["files"]}
    return {"version": manifest["version"], "model_version": manifest["model_version"], "files": files}


def test_a_run_killed_mid_stage_and_retried_publishes_the_uninterrupted_bytes(tmp_path, tiny_encoder):
    data = synthetic.generate_dataset(n_users=40, n_items=30, interactions_per_user=8, seed=11)
    ds = synthetic.last_day(data.interactions)
    config = tmp_path / "settings.toml"
    config.write_text(settings_toml({**TINY_TRAIN, "model.encoder": str(tiny_encoder)}))
    roots = {}
    for name in ("uninterrupted", "killed"):
        env = {**os.environ, "RECSYS_CONFIG": str(config), "RECSYS_DATA_ROOT": str(tmp_path / name)}
        settings = load_settings(env=env)
        land_raw_drop(Storage(settings), ds, data.interactions, data.items)
        roots[name] = (env, settings)

    env, settings = roots["uninterrupted"]
    took = {}
    for stage in STAGES:
        start = time.monotonic()
        finish(stage_process(stage, ds, env), stage)
        took[stage] = time.monotonic() - start
    reference = published(settings)
    assert reference["files"]

    env, settings = roots["killed"]
    killed = []
    for stage in STAGES:
        proc = stage_process(stage, ds, env)
        time.sleep(took[stage] / 2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed.append(stage)
        proc.wait(timeout=60)
        seen = published(settings)
        assert seen in ({}, reference) if stage == "publish" else seen == {}, f"visible after a kill in {stage}"
        finish(stage_process(stage, ds, env), stage)  # the retry
    assert published(settings) == reference, json.dumps(took)
    assert len(killed) >= len(STAGES) // 2, killed  # most stages were still running when killed

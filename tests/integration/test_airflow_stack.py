"""Airflow as its users run it: the real scheduler, a REST trigger with params, the downstream DAG
started by the asset event, and a headless browser on the Airflow UI, the MLflow run page and the
run report (screenshots under the data root). One stack for the module, stopped at the end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recsys_lib.data import land_raw_drop, synthetic
from recsys_lib.reader import PublishedTables
from recsys_lib.run_report import REPORT_FILE, RUN_REPORT
from recsys_lib.stack import USER, LocalStack
from recsys_lib.storage import Storage
from recsys_lib.tracking import CHAMPION, Tracker
from tests.conftest import TINY_TRAIN, free_ports, make_settings, processes_with, settings_toml

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOP_N = 4


@pytest.fixture(scope="module")
def stack_run(tmp_path_factory, tiny_encoder):
    base = tmp_path_factory.mktemp("stack")
    overrides = {"model.encoder": str(tiny_encoder), "rules.min_segment_users": 2, "rank.min_users": 5}
    config = base / "settings.toml"
    config.write_text(settings_toml({**TINY_TRAIN, **overrides}))
    settings = make_settings(base / "data", **overrides)
    data = synthetic.generate_dataset(n_users=40, n_items=40, interactions_per_user=8, seed=5, new_users=2)
    ds = synthetic.last_day(data.interactions)
    land_raw_drop(Storage(settings), ds, data.interactions, data.items, users=data.users)
    stack = LocalStack(settings, *free_ports(2), password="test-pass",
                       extra_env={"RECSYS_CONFIG": str(config)})  # fmt: skip
    with stack:
        run_id = stack.trigger("recsys_nightly", {"top_n": TOP_N}, logical_date=f"{ds}T00:00:00Z")
        stack.api("PATCH", "dags/recsys_downstream_example", {"is_paused": False})
        run = stack.wait_for_run("recsys_nightly", run_id, timeout_s=900)
        downstream = _wait_for_downstream(stack)
        yield {"stack": stack, "settings": settings, "ds": ds, "run": run, "downstream": downstream}
    assert processes_with(f"AIRFLOW_HOME={stack.home}") == []  # stop() left nothing running


def _wait_for_downstream(stack: LocalStack, timeout_s: float = 240) -> dict | None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = stack.api("GET", "dags/recsys_downstream_example/dagRuns")["dag_runs"]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        if done:
            return done[0]
        time.sleep(3)
    return None


def test_a_rest_trigger_with_params_publishes_through_the_scheduler(stack_run):
    run = stack_run["run"]
    assert run["state"] == "success", f"see {stack_run['stack'].logs} and the task logs under AIRFLOW_HOME/logs"
    assert run["run_type"] == "manual" and run["conf"] == {"top_n": TOP_N}
    topn = PublishedTables.from_settings(stack_run["settings"]).table("user_topn").to_pandas()
    assert topn["rank"].max() == TOP_N and (topn.groupby("user_id").size() == TOP_N).all()


def test_the_downstream_dag_was_started_by_the_asset_event(stack_run):
    downstream = stack_run["downstream"]
    assert downstream is not None, "recsys_downstream_example never ran after the publish"
    assert downstream["state"] == "success"
    assert downstream["run_type"] == "asset_triggered" and downstream["triggered_by"] == "asset"


def test_a_task_that_fails_for_good_raises_the_alert(stack_run):
    """Unpausing schedules today's run, which has no drop: ingest fails at once (bad input is not
    retried) and its on_failure_callback logs the alert, through the real scheduler."""
    import time

    stack = stack_run["stack"]
    deadline = time.monotonic() + 180  # it may have been queued behind the manual run
    while True:
        runs = stack.api("GET", "dags/recsys_nightly/dagRuns")["dag_runs"]
        scheduled = [r for r in runs if r["run_type"] == "scheduled"]
        if (scheduled and scheduled[0]["state"] in ("success", "failed")) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert scheduled and scheduled[0]["state"] == "failed", scheduled
    logs = stack.home / "logs" / "dag_id=recsys_nightly" / f"run_id={scheduled[0]['dag_run_id']}" / "task_id=ingest"
    text = "".join(p.read_text(errors="replace") for p in logs.glob("attempt=*.log"))
    assert "ALERT" in text and '\\"event\\": \\"task_failed\\"' in text and "no item catalogue" in text


def test_a_browser_sees_the_dag_the_run_the_mlflow_run_and_the_report(stack_run):
    assert CHROMIUM, "no chromium on PATH: `make test` installs it with apt-get (as root)"
    from playwright.sync_api import expect, sync_playwright

    stack, settings, run = stack_run["stack"], stack_run["settings"], stack_run["run"]
    shots = Path(settings.data_root) / "screenshots"
    shots.mkdir(exist_ok=True)
    champion = Tracker(settings).alias(CHAMPION)
    experiment = Tracker(settings).experiment_id
    manifest = PublishedTables.from_settings(settings).manifest()
    report_key = manifest["artefacts"][RUN_REPORT]["files"][0]["key"]
    assert report_key.endswith(REPORT_FILE)
    report = Path(settings.storage.publish_root) / report_key
    from urllib.parse import quote

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # pages render slowly while the machine is busy
        page.goto(f"{stack.airflow_url}/dags")
        page.fill("input[name='username']", USER)
        page.fill("input[name='password']", "test-pass")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("link", name="recsys_nightly", exact=True)).to_be_visible()
        expect(page.get_by_role("link", name="recsys_downstream_example", exact=True)).to_be_visible()
        page.screenshot(path=shots / "airflow-dags.png")

        page.goto(f"{stack.airflow_url}/dags/recsys_nightly/runs/{quote(run['dag_run_id'], safe='')}")
        expect(page.get_by_text(run["dag_run_id"]).first).to_be_visible()
        expect(page.get_by_text("publish").first).to_be_visible()
        page.screenshot(path=shots / "airflow-run.png")

        page.goto(f"{stack.mlflow_url}/#/experiments/{experiment}/runs/{champion.run_id}")
        expect(page.get_by_text(f"train {stack_run['ds']}").first).to_be_visible()
        page.screenshot(path=shots / "mlflow-run.png")

        page.goto(report.as_uri())
        expect(page.get_by_role("heading", name="Quality gate: passed")).to_be_visible()
        expect(page.get_by_role("heading", name="What was recommended")).to_be_visible()
        assert page.locator("img").count() >= 3
        page.screenshot(path=shots / "run-report.png", full_page=True)
        browser.close()
    assert all((shots / f).stat().st_size > 10_000 for f in
               ("airflow-dags.png", "airflow-run.png", "mlflow-run.png", "run-report.png"))  # fmt: skip

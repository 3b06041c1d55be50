"""The cluster profile started for real without Docker (`make cluster-local`): Airflow with the
CeleryExecutor on PostgreSQL and Redis and a Celery worker, a Spark standalone master and worker,
`mlflow server` on PostgreSQL with its artefacts in an S3 server, the published tables in S3.
recsys_nightly is triggered through the REST API and every part is asked what it did."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from recsys_lib.data import land_raw_drop, synthetic
from recsys_lib.reader import PublishedTables
from recsys_lib.stack import MLFLOW_BUCKET, PUBLISH_BUCKET, ClusterPorts, ClusterStack
from recsys_lib.storage import S3Store, Storage
from recsys_lib.tracking import CHAMPION, Tracker
from tests.conftest import TINY_TRAIN, free_ports, make_settings, processes_with, settings_toml

pytestmark = pytest.mark.slow
TOP_N = 3


@pytest.fixture(scope="module")
def cluster_run(tiny_encoder):
    # Run as root, Postgres runs as the postgres user, which cannot enter pytest's 0700 folders.
    root = Path(tempfile.mkdtemp(prefix="recsys-cluster-"))
    root.chmod(0o755)
    try:
        overrides = {"model.encoder": str(tiny_encoder), "rules.min_segment_users": 2, "rank.min_users": 5}
        config = root / "settings.toml"
        config.write_text(settings_toml({**TINY_TRAIN, **overrides}))
        airflow_port, mlflow_port, *service_ports = free_ports(8)
        stack = ClusterStack(make_settings(root / "data"), airflow_port, mlflow_port, password="test-pass",
                             extra_env={"RECSYS_CONFIG": str(config)}, ports=ClusterPorts(*service_ports),
                             spark_worker_memory="1g")  # fmt: skip
        with stack, pytest.MonkeyPatch.context() as env:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
                env.setenv(key, stack.env()[key])  # this process reads the stack's S3 server too
            settings = stack.recsys_settings()
            data = synthetic.generate_dataset(n_users=40, n_items=40, interactions_per_user=8, seed=7, new_users=2)
            ds = synthetic.last_day(data.interactions)
            land_raw_drop(Storage(settings), ds, data.interactions, data.items, users=data.users)
            run_id = stack.trigger("recsys_nightly", {"top_n": TOP_N}, logical_date=f"{ds}T00:00:00Z")
            run = stack.wait_for_run("recsys_nightly", run_id, timeout_s=1200)
            tasks = stack.api("GET", f"dags/recsys_nightly/dagRuns/{run_id}/taskInstances")["task_instances"]
            yield {"stack": stack, "settings": settings, "ds": ds, "run": run, "tasks": tasks,
                   "spark": stack.spark_state()}  # fmt: skip
        assert processes_with(f"AIRFLOW_HOME={stack.home}") == []  # stop() left nothing running
        assert not (stack.root / "postgres" / "postmaster.pid").exists(), "Postgres did not shut down cleanly"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_nightly_runs_on_celery_and_publishes_to_s3(cluster_run):
    run, settings = cluster_run["run"], cluster_run["settings"]
    assert settings.profile == "cluster"
    assert run["state"] == "success", f"see {cluster_run['stack'].logs} and the task logs"
    assert {t["state"] for t in cluster_run["tasks"]} == {"success"}
    worker_log = (cluster_run["stack"].logs / "celery-worker.log").read_text(errors="replace")
    executed = [line for line in worker_log.splitlines() if "Executing workload in Celery" in line]
    for task in cluster_run["tasks"]:  # the Celery worker ran each of them
        assert any(f"run_id={run['dag_run_id']}/task_id={task['task_id']}/" in line for line in executed), task

    tables = PublishedTables.from_settings(settings)
    assert tables.store.uri("").startswith(f"s3://{PUBLISH_BUCKET}")
    topn = tables.table("user_topn").to_pandas()
    assert (topn.groupby("user_id").size() == TOP_N).all()
    assert tables.manifest()["ds"] == cluster_run["ds"]


def test_spark_stages_ran_as_applications_of_the_standalone_master(cluster_run):
    names = [app["name"] for app in cluster_run["spark"].get("completedapps", [])]
    assert any("ingest" in n for n in names) and any("features" in n for n in names), names


def test_mlflow_keeps_runs_in_postgres_and_artefacts_in_s3(cluster_run):
    import psycopg2

    stack, settings = cluster_run["stack"], cluster_run["settings"]
    champion = Tracker(settings).alias(CHAMPION)
    assert champion is not None
    with psycopg2.connect(stack.env()["MLFLOW_BACKEND_STORE_URI"].replace("postgresql+psycopg2", "postgresql")) as db:
        with db.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM model_versions")
            assert cursor.fetchone()[0] >= 1
    keys = S3Store(f"s3://{MLFLOW_BUCKET}", endpoint_url=stack.s3_url).list("")
    assert any(champion.run_id in k and "/model/" in k for k in keys), keys[:20]

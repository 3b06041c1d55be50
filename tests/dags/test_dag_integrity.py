"""The DAG parses through Airflow, has the expected graph and settings, and stays wiring only."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
EXPECTED_EDGES = {
    ("ingest", "features"),
    ("features", "train"),
    ("train", "embed_items"),
    ("embed_items", "build_index"),
    ("build_index", "recommend"),
    ("build_index", "evaluate"),
    ("recommend", "publish"),
    ("evaluate", "publish"),
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dags_import_cleanly(dagbag):
    assert dagbag.import_errors == {}
    assert "recsys_nightly" in dagbag.dags


def test_one_task_per_stage(dagbag):
    from jobs.pipeline import STAGES

    assert sorted(t.task_id for t in dagbag.dags["recsys_nightly"].tasks) == sorted(STAGES)


def test_task_graph(dagbag):
    dag = dagbag.dags["recsys_nightly"]
    edges = {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}
    assert edges == EXPECTED_EDGES


def test_schedule_retries_and_params(dagbag):
    dag = dagbag.dags["recsys_nightly"]
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.schedule == "@daily" and dag.timetable.expression == "0 0 * * *"
    for task in dag.tasks:
        assert task.retries == 2 and task.retry_exponential_backoff
        assert task.retry_policy is not None
    assert {"full_retrain", "top_n", "force_publish"} <= set(dag.params)
    publish = dag.get_task("publish")
    assert {o.name for o in publish.outlets} == {"recsys_user_topn", "recsys_item_similar"}


def test_operating_idioms(dagbag):
    """Task docs, a pool for the GPU stages, timeouts, a failure alert and a deadline."""
    dag = dagbag.dags["recsys_nightly"]
    for task in dag.tasks:
        assert task.doc_md and len(task.doc_md) > 40, task.task_id  # the docstring, shown in the UI
        assert task.execution_timeout is not None and task.on_failure_callback, task.task_id
    assert {t.task_id for t in dag.tasks if t.pool == "recsys_gpu"} == {"train", "embed_items"}
    assert dag.get_task("train").execution_timeout > dag.get_task("ingest").execution_timeout
    assert not dag.deadline  # opt-in: `airflow dags test` (make demo) fails on a DAG with a deadline


def test_the_deadline_where_the_scheduler_runs(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("RECSYS_DEADLINE_HOURS", "8")
    dag = DagBag(dag_folder=str(DAGS / "recsys_nightly.py")).dags["recsys_nightly"]
    (deadline,) = dag.deadline
    assert deadline.callback.path == "recsys_lib.alerts.deadline_missed"
    assert deadline.interval.total_seconds() == 8 * 3600
    assert dag.dagrun_timeout.total_seconds() > deadline.interval.total_seconds()


def test_bad_input_is_not_retried(dagbag):
    from recsys_lib.errors import DataValidationError

    policy = dagbag.dags["recsys_nightly"].get_task("ingest").retry_policy
    decision = policy.evaluate(DataValidationError("12% rejected"), try_number=1, max_tries=3)
    assert decision.action.value == "fail"
    assert policy.evaluate(ConnectionError("S3 timeout"), try_number=1, max_tries=3).action.value == "default"


def test_parsing_the_dag_imports_no_heavy_library():
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]);"
        "heavy = {'pyspark', 'torch', 'faiss', 'transformers', 'mlflow', 'pandas'};"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(DAGS / "recsys_nightly.py")], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_gpu_stages_go_to_the_gpu_queue_when_one_is_named():
    """RECSYS_GPU_QUEUE (set in the compose stack) routes train and embed_items; parsed in a
    fresh process because the DAG reads it at parse time."""
    code = (
        "from airflow.dag_processing.dagbag import DagBag; "
        f"dag = DagBag(dag_folder={str(DAGS)!r}).dags['recsys_nightly']; "
        "print({t.task_id: t.queue for t in dag.tasks})"
    )
    env = {**os.environ, "RECSYS_GPU_QUEUE": "gpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    queues = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert {t for t, q in queues.items() if q == "gpu"} == {"train", "embed_items"}

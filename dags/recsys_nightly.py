"""
### recsys_nightly

Every night (and on a manual trigger) turn the day's raw drops into published recommendation
tables: ingest + validate (Spark) -> features (Spark) -> fine-tune the two-tower model ->
embed every catalogue item -> FAISS index -> user top-N and item-to-item tables -> evaluate
against popularity, item-kNN and ALS baselines -> publish behind the quality gate.

Tasks hand each other small summaries (URIs, counts, the model version), never data; the work
is in `jobs/`, runnable without Airflow as `python -m jobs.<stage> --ds YYYY-MM-DD`.
Bad input and refused publishes fail at once (a retry cannot fix them); other errors retry with
exponential backoff. A task that fails for good, and a run still going `RECSYS_DEADLINE_HOURS`
after it was queued (where set: 8 in `make airflow` and the compose stack), raise an alert
(`recsys_lib.alerts`: an ERROR log line, and a JSON POST to `alerts.webhook_url` when set).
train and embed_items share the pool `RECSYS_GPU_POOL` (`recsys_gpu`, one slot per GPU:
`airflow pools set recsys_gpu 1 "GPU stages"`); with `RECSYS_GPU_QUEUE` set where the DAG is
parsed they also go to that queue (the compose stack's GPU worker listens on `gpu`). Each task's
own documentation is its docstring, shown in the UI.
"""

from __future__ import annotations

import datetime as dt
import os

import pendulum
from airflow.sdk import (
    Asset,
    DeadlineAlert,
    DeadlineReference,
    ExceptionRetryPolicy,
    Param,
    RetryAction,
    RetryRule,
    SyncCallback,
    dag,
    task,
)

USER_TOPN = Asset("recsys_user_topn")
ITEM_SIMILAR = Asset("recsys_item_similar")
# The executor's queue for the stages that want a GPU; unset: the default queue.
# The GPU stages take a slot of one pool (so two runs never share a GPU) and, when set, a queue.
ON_GPU = {"pool": os.environ.get("RECSYS_GPU_POOL", "recsys_gpu")}
if os.environ.get("RECSYS_GPU_QUEUE"):
    ON_GPU["queue"] = os.environ["RECSYS_GPU_QUEUE"]
# Opt-in where the scheduler runs (`make airflow` and the compose stack set 8 hours): Airflow
# 3.3.2's `airflow dags test`, which `make demo` uses, fails on a DAG that has a deadline.
DEADLINE_HOURS = os.environ.get("RECSYS_DEADLINE_HOURS")


def alert_on_failure(context) -> None:
    """A task failed after its last retry: tell a person (recsys_lib.alerts)."""
    from recsys_lib.alerts import task_failed

    task_failed(context)


default_args = {
    "owner": "recsys",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=30),
    "execution_timeout": dt.timedelta(hours=2),  # train has its own, longer one
    "on_failure_callback": alert_on_failure,
    "retry_policy": ExceptionRetryPolicy(
        rules=[
            RetryRule(
                exception="recsys_lib.errors.NotRetryable",
                action=RetryAction.FAIL,
                reason="bad input, bad settings or a refused publish: a retry cannot fix it",
            )
        ]
    ),
}


@dag(
    dag_id="recsys_nightly",
    schedule="@daily",
    # Early enough for backfills of historical drops; catchup=False means no automatic backfill.
    start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    dagrun_timeout=dt.timedelta(hours=12),
    # The tables are late for their readers before the run fails: say so while it still runs.
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(hours=float(DEADLINE_HOURS)),
        callback=SyncCallback("recsys_lib.alerts.deadline_missed"),
    )
    if DEADLINE_HOURS
    else None,
    tags=["recsys"],
    doc_md=__doc__,
    params={
        "full_retrain": Param(
            None,
            type=["null", "boolean"],
            description="Train from the pretrained encoder instead of warm-starting from the champion.",
        ),
        "top_n": Param(None, type=["null", "integer"], minimum=1, description="Recommendations per user."),
        "similar_n": Param(None, type=["null", "integer"], minimum=1, description="Similar items per item."),
        "max_train_steps": Param(None, type=["null", "integer"], minimum=1, description="Training steps."),
        "force_publish": Param(
            None, type=["null", "boolean"], description="Publish even if the quality gate fails (recorded as forced)."
        ),
        "backfill": Param(
            None,
            type=["null", "boolean"],
            description="For a logical date older than the live version's: make its tables live and its model "
            "champion (by default a backfill is published as a version but not made live).",
        ),
    },
)
def recsys_nightly():
    @task
    def ingest(params=None, ds=None, dag_run=None) -> dict:
        """Validate the day's raw drops (Spark): typed lake partitions; bad rows quarantined with their reason."""
        from jobs.pipeline import run_stage

        # A manual run without a logical date processes the day it was triggered for.
        return run_stage("ingest", ds or dag_run.run_after.date().isoformat(), params)

    @task
    def features(ingested: dict, params=None) -> dict:
        """Build the features (Spark): item documents, histories, the evaluation split, popularity, search pairs."""
        from jobs.pipeline import run_stage

        return run_stage("features", ingested["ds"], params)

    @task(execution_timeout=dt.timedelta(hours=6), **ON_GPU)
    def train(featured: dict, params=None) -> dict:
        """Fine-tune the two-tower model (evaluation model, then the served one on every event); register it."""
        from jobs.pipeline import run_stage

        return run_stage("train", featured["ds"], params)

    @task(**ON_GPU)
    def embed_items(trained: dict, params=None) -> dict:
        """Embed the catalogue with the new model (the transformer only for texts it has not encoded)."""
        from jobs.pipeline import run_stage

        return run_stage("embed_items", trained["ds"], params, trained["model_version"])

    @task
    def build_index(embedded: dict, params=None) -> dict:
        """Build the FAISS index over the item vectors and measure its recall against exact search."""
        from jobs.pipeline import run_stage

        return run_stage("build_index", embedded["ds"], params, embedded["model_version"])

    @task
    def recommend(indexed: dict, params=None) -> dict:
        """Stage user_topn, item_similar, query_topn and the vector tables for publish."""
        from jobs.pipeline import run_stage

        return run_stage("recommend", indexed["ds"], params, indexed["model_version"])

    @task
    def evaluate(indexed: dict, params=None) -> dict:
        """Rank the holdout with the model, the champion and the baselines; write the evaluation report."""
        from jobs.pipeline import run_stage

        return run_stage("evaluate", indexed["ds"], params, indexed["model_version"])

    @task(outlets=[USER_TOPN, ITEM_SIMILAR])
    def publish(recommended: dict, evaluated: dict, params=None) -> dict:
        """Check the staged tables, apply the quality gate, publish a new version, move the champion alias."""
        from jobs.pipeline import run_stage

        return run_stage("publish", recommended["ds"], params, recommended["model_version"])

    indexed = build_index(embed_items(train(features(ingest()))))
    publish(recommend(indexed), evaluate(indexed))


recsys_nightly()

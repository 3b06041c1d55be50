"""
### recsys_nightly

Every night (and on a manual trigger) turn the day's raw drops into published recommendation
tables: ingest + validate (Spark) -> features (Spark) -> fine-tune the two-tower model ->
embed every catalogue item -> FAISS index -> user top-N and item-to-item tables -> evaluate
against popularity, item-kNN and ALS baselines -> publish behind the quality gate.

Tasks hand each other small summaries (URIs, counts, the model version), never data; the work
is in `jobs/`, runnable without Airflow as `python -m jobs.<stage> --ds YYYY-MM-DD`.
Bad input and refused publishes fail at once (a retry cannot fix them); other errors retry with
exponential backoff. With `RECSYS_GPU_QUEUE` set where the DAG is parsed, train and embed_items
go to that queue (the compose stack's GPU worker listens on `gpu`).
"""

from __future__ import annotations

import datetime as dt
import os

import pendulum
from airflow.sdk import Asset, ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, task

USER_TOPN = Asset("recsys_user_topn")
ITEM_SIMILAR = Asset("recsys_item_similar")
# The executor's queue for the stages that want a GPU; unset: the default queue.
ON_GPU = {"queue": os.environ["RECSYS_GPU_QUEUE"]} if os.environ.get("RECSYS_GPU_QUEUE") else {}

default_args = {
    "owner": "recsys",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=30),
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
        from jobs.pipeline import run_stage

        # A manual run without a logical date processes the day it was triggered for.
        return run_stage("ingest", ds or dag_run.run_after.date().isoformat(), params)

    @task
    def features(ingested: dict, params=None) -> dict:
        from jobs.pipeline import run_stage

        return run_stage("features", ingested["ds"], params)

    @task(execution_timeout=dt.timedelta(hours=6), **ON_GPU)
    def train(featured: dict, params=None) -> dict:
        from jobs.pipeline import run_stage

        return run_stage("train", featured["ds"], params)

    @task(**ON_GPU)
    def embed_items(trained: dict, params=None) -> dict:
        from jobs.pipeline import run_stage

        return run_stage("embed_items", trained["ds"], params, trained["model_version"])

    @task
    def build_index(embedded: dict, params=None) -> dict:
        from jobs.pipeline import run_stage

        return run_stage("build_index", embedded["ds"], params, embedded["model_version"])

    @task
    def recommend(indexed: dict, params=None) -> dict:
        from jobs.pipeline import run_stage

        return run_stage("recommend", indexed["ds"], params, indexed["model_version"])

    @task
    def evaluate(indexed: dict, params=None) -> dict:
        from jobs.pipeline import run_stage

        return run_stage("evaluate", indexed["ds"], params, indexed["model_version"])

    @task(outlets=[USER_TOPN, ITEM_SIMILAR])
    def publish(recommended: dict, evaluated: dict, params=None) -> dict:
        from jobs.pipeline import run_stage

        return run_stage("publish", recommended["ds"], params, recommended["model_version"])

    indexed = build_index(embed_items(train(features(ingest()))))
    publish(recommend(indexed), evaluate(indexed))


recsys_nightly()

"""
### recsys_downstream_example

An example consumer of the published tables: it runs whenever `recsys_nightly` publishes a new
user top-N table (the Airflow Asset `recsys_user_topn`), not on a clock. It resolves the live
version once, through `latest.json`, and exports it as one JSON line per user
(`{"user_id": ..., "items": [...], "version": ...}`), the shape a key-value cache loads.
Copy it as the starting point of your own consumer.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

USER_TOPN = Asset("recsys_user_topn")  # the outlet of recsys_nightly's publish task


@dag(
    dag_id="recsys_downstream_example",
    schedule=[USER_TOPN],
    start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["recsys", "example"],
    doc_md=__doc__,
)
def recsys_downstream_example():
    @task
    def export_user_topn() -> dict:
        from recsys_lib.exports import export_user_topn_jsonl
        from recsys_lib.settings import load_settings

        return export_user_topn_jsonl(load_settings())

    export_user_topn()


recsys_downstream_example()

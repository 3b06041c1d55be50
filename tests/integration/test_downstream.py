"""What downstream systems do with the published tables: DuckDB reading the live version the
way the README shows, and the example downstream DAG run through Airflow on a published store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from recsys_lib import publish as pub
from recsys_lib.recommend import item_similar_table, user_topn_table
from recsys_lib.storage import Storage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def published(settings):
    store = Storage(settings).published
    for ds, item in (("2026-01-01", "b"), ("2026-01-02", "d")):
        topn = user_topn_table(["u1", "u1", "u2"], [1, 2, 1], [item, "c", "a"], [0.9, 0.8, 0.7], "m/1", ds,
                               ["a", "a", None])  # fmt: skip
        similar = item_similar_table(["a"], [1], ["b"], [0.5], "m/1", ds)
        manifest = pub.publish_version(store, ds, {"user_topn": topn, "item_similar": similar}, "m/1", {})
    return settings, manifest


def test_duckdb_reads_the_latest_tables_as_the_readme_shows(published):
    settings, live = published
    root = settings.storage.publish_root
    pointer = json.loads(Path(root, "latest.json").read_text())
    manifest = json.loads(Path(root, pointer["manifest"]).read_text())
    files = [f"{root}/{f['key']}" for f in manifest["tables"]["user_topn"]["files"]]
    rows = duckdb.sql(
        f"select rank, item_id, reason_item_id from read_parquet({files}) where user_id = 'u1' order by rank"
    )
    assert rows.fetchall() == [(1, "d", "a"), (2, "c", "a")]
    assert manifest["version"] == live["version"]


@pytest.mark.slow
def test_the_example_downstream_dag_exports_the_live_version(published, tmp_path):
    settings, live = published
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "RECSYS_DATA_ROOT": settings.data_root,
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    for args in (["db", "migrate"], ["dags", "test", "recsys_downstream_example", "2026-01-02"]):
        done = subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "state=success" in done.stdout + done.stderr
    export = Storage(settings).work.read_bytes(f"exports/user_topn/{live['version']}.jsonl").decode()
    assert [json.loads(line) for line in export.splitlines()] == [
        {"user_id": "u1", "items": ["d", "c"], "version": live["version"]},
        {"user_id": "u2", "items": ["a"], "version": live["version"]},
    ]

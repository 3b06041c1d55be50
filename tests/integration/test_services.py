"""The cluster profile's services, started from the installed packages on loopback: a Spark
standalone master with one worker (the ingest and features jobs run as its application), and an
MLflow tracking server whose artifacts go through it to an S3 bucket (moto), the way the
compose stack's MLflow server writes to MinIO.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyspark
import pytest

from recsys_lib.data import land_raw_drop, synthetic
from recsys_lib.storage import FeatureTable, Storage
from recsys_lib.tracking import CHAMPION, Tracker
from tests.conftest import TINY_TRAIN, _free_port, make_settings, settings_toml

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    """A standalone master and a one-core worker from pyspark's own launcher; yields
    (master URL, master web UI URL)."""
    logs = tmp_path_factory.mktemp("spark-cluster")
    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    port, ui, worker_ui = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    master = subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(ui)],
        env=env, stdout=open(logs / "master.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"spark://127.0.0.1:{port}"
    try:
        wait_for_port(port, master, "the Spark master")
        worker = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "1",
             "--memory", "1g", "--webui-port", str(worker_ui), "--work-dir", str(logs / "work")],
            env=env, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
    except BaseException:
        stop(master)
        raise
    try:
        deadline = time.time() + 90
        while not master_state(ui).get("aliveworkers"):
            if time.time() > deadline or worker.poll() is not None:
                raise RuntimeError(f"no worker registered; see {logs}")
            time.sleep(0.5)
        yield url, ui
    finally:
        stop(worker, master)


def master_state(ui_port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
            return json.load(response)
    except OSError:
        return {}


@pytest.mark.spark
def test_the_spark_stages_run_on_a_standalone_cluster(spark_cluster, tmp_path, tiny_encoder):
    """The cluster profile's Spark path: each job is its own driver process and an application
    of the master; the feature tables cover every user and item; embed_items' transformer pass
    runs on the executors (each loading the model version from MLflow) and gives the vectors of
    the single-process path."""
    from recsys_lib.embedding import embed_catalogue, vectors_of
    from recsys_lib.tracking import CANDIDATE

    master_url, ui_port = spark_cluster
    overrides = {"model.encoder": str(tiny_encoder), "spark.master": master_url, "embed.engine": "spark",
                 "embed.runtime": "torch", "embed.batch_size": 4}  # fmt: skip: several tasks
    config = tmp_path / "settings.toml"
    config.write_text(settings_toml({**TINY_TRAIN, **overrides}))
    settings = make_settings(tmp_path / "data", **overrides)
    data = synthetic.generate_dataset(n_users=30, n_items=25, interactions_per_user=6, seed=5)
    ds = synthetic.last_day(data.interactions)
    land_raw_drop(Storage(settings), ds, data.interactions, data.items)
    env = {**os.environ, "RECSYS_DATA_ROOT": str(tmp_path / "data"), "RECSYS_CONFIG": str(config)}
    for stage in ("ingest", "features", "train", "embed_items"):
        if stage == "embed_items":  # train cached today's encoder outputs: make every item go through it
            shutil.rmtree(tmp_path / "data" / "work" / "encoder_outputs")
        done = subprocess.run([sys.executable, "-m", f"jobs.{stage}", "--ds", ds], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, f"{stage}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    summary = json.loads(done.stdout)
    assert summary["engine"] == "spark" and summary["encoded"] == len(data.items), summary
    several_tasks = rf"encoding {len(data.items)} texts on spark://\S+ in [2-9]\d* tasks"
    assert re.search(several_tasks, done.stderr), done.stderr[-2000:]

    apps = [app["name"] for app in master_state(ui_port)["completedapps"]]
    assert {"recsys-ingest", "recsys-features", "recsys-embed"} <= set(apps), apps
    storage = Storage(settings)
    histories = storage.read_features(FeatureTable.USER_HISTORIES, ds, columns=["user_id"])
    assert set(histories["user_id"]) == set(data.interactions["user_id"].astype(str))
    documents = storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds).sort_values("item_id", kind="stable")
    assert len(documents) == len(data.items)

    tracker = Tracker(settings)
    mv = tracker.alias(CANDIDATE)
    model, tokenizer = tracker.load_model(mv)
    local, _ = embed_catalogue(model, tokenizer, documents.reset_index(drop=True), 8, "cpu")  # no cache
    distributed = storage.read_item_embeddings(ds, mv.version)
    assert distributed.column("item_id").to_pylist() == list(local.ids)
    difference = float(np.abs(vectors_of(distributed) - local.vectors).max())
    print(f"max |spark executors - single process| over {len(local)} item vectors: {difference:.2e}")
    assert difference < 1e-5


@pytest.mark.s3
def test_tracking_through_an_mlflow_server_with_artifacts_in_s3(tmp_path, s3_bucket):
    """Runs, the registry, aliases and the model's files through `mlflow server`, which keeps
    its artifacts in an S3 bucket (the compose stack's MLflow server and MinIO)."""
    endpoint, bucket = s3_bucket
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", f"s3://{bucket}/mlflow", "--workers", "1"],
        env={**os.environ, "MLFLOW_S3_ENDPOINT_URL": endpoint},
        stdout=open(tmp_path / "mlflow-server.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, server, "mlflow server")
        # As in the cluster profile: no artifact root of our own, so the server's proxy decides.
        uri = f"http://127.0.0.1:{port}"
        settings = make_settings(tmp_path / "data", **{"tracking.tracking_uri": uri, "tracking.artifact_root": ""})
        tracker = Tracker(settings)
        run_id = tracker.start_run("train 2026-01-01", {"ds": "2026-01-01", "fingerprint": "f"})
        tracker.log_metrics(run_id, {"model.ndcg_at_10": 0.3})
        checkpoint = tmp_path / "ckpt"
        checkpoint.mkdir()
        (checkpoint / "towers.safetensors").write_bytes(b"weights")
        tracker.log_artifacts(run_id, checkpoint, "model")
        tracker.finish_run(run_id)
        mv = tracker.register_model(run_id, {"ds": "2026-01-01"})
        tracker.set_alias(CHAMPION, mv.version)

        assert tracker.find_finished_run({"ds": "2026-01-01", "fingerprint": "f"}) == run_id
        assert tracker.alias(CHAMPION).run_id == run_id
        assert (tracker.download_model(mv.version) / "towers.safetensors").read_bytes() == b"weights"
        # The bytes live in the bucket, not on the client's or the server's disk.
        from recsys_lib.storage import S3Store

        keys = S3Store(f"s3://{bucket}/mlflow", endpoint_url=endpoint).list("")
        assert any(k.endswith("model/towers.safetensors") for k in keys), keys
    finally:
        stop(server)

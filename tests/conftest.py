"""Shared fixtures: settings on a temporary data root, a real local Spark session, a tiny random
encoder (real tokenizer, random 2-layer BERT), and a real S3-protocol server (moto) on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Airflow reads its configuration once, at first import: point it at a throwaway home so no
# test touches ~/airflow. Tests that run Airflow itself pass their own AIRFLOW_HOME to a subprocess.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="recsys-test-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from recsys_lib.settings import Settings, load_settings  # noqa: E402

# py4j logs from finalizers after pytest has closed the capture streams.
logging.getLogger("py4j").setLevel(logging.WARNING)

ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = {
    "model.max_length": 24,
    "model.history_length": 5,
    "train.batch_size": 16,
    "train.extra_negatives": 32,
    "train.frozen_steps": 6,
    "train.max_steps": 12,
    "train.refresh_every": 6,
    "train.head_learning_rate": 0.01,
    "train.learning_rate": 0.001,
    "embed.batch_size": 64,
    "spark.master": "local[2]",
    "spark.shuffle_partitions": 2,
    "spark.driver_memory": "1g",
    "recommend.top_n": 5,
    "recommend.similar_n": 4,
    "recommend.users_per_part": 25,  # several parts even on tiny data
    "evaluate.tune_baselines": False,  # one fit per baseline: tuning has unit tests of its own
}


def evaluation_report(model: dict, champion: dict | None = None, ks=(10, 20), model_version="m/2", ds="2026-01-01"):
    """A hand-made EvaluationReport with the given all-users metrics of the model (and champion)."""
    from recsys_lib.evaluation.report import EvaluationReport, Segment

    rankers = {"model": model, **({"champion": champion} if champion is not None else {})}
    return EvaluationReport(
        ds=ds, model_version=model_version, ks=tuple(ks), all_users=Segment("all users (n=2)", 2, rankers),
        light_users=Segment("light users (n=0)", 0), cold_items=Segment("cold items (n=0, users=0)", 0),
    )  # fmt: skip


def settings_toml(overrides: dict) -> str:
    """The same overrides as a settings file, for processes that read RECSYS_CONFIG."""
    sections: dict[str, list[str]] = {}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        sections.setdefault(section, []).append(f"{key} = {json.dumps(value)}")
    return "\n".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())


def make_settings(data_root: Path, **overrides) -> Settings:
    env = {"RECSYS_DATA_ROOT": str(data_root)}
    return load_settings(env=env, overrides={**TINY_TRAIN, **overrides})


@pytest.fixture
def settings(tmp_path, tiny_encoder) -> Settings:
    return make_settings(tmp_path / "data", **{"model.encoder": str(tiny_encoder)})


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from recsys_lib.spark import get_spark

    s = make_settings(tmp_path_factory.mktemp("spark"))
    session = get_spark(s, "recsys-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the bundled MiniLM tokenizer."""
    from recsys_lib.models.encoder import save_random_encoder

    return save_random_encoder(tmp_path_factory.mktemp("tiny-encoder"), hidden_size=32, layers=2)


@pytest.fixture(scope="session")
def tiny_two_tower(tiny_encoder):
    """An untrained two-tower model on the tiny encoder (32 dimensions, histories of 3, T = 0.05):
    its user tower is the normalised mean of the history's item vectors."""
    from recsys_lib.models.two_tower import TwoTowerModel

    model, _ = TwoTowerModel.from_encoder(str(tiny_encoder), history_length=3, max_length=16, temperature=0.05)
    return model.eval()


def hand_made_items(bias=(0.0, 0.0, 0.0, 0.0, 15.0)):
    """Five items in 32 dimensions with known cosines: a = e0, b = e1, c = (e0 + e1) / sqrt 2,
    d = -e0, e = e2 (orthogonal to all but itself, lifted by its bias)."""
    import numpy as np
    import pandas as pd

    from recsys_lib.embedding import ItemVectors

    vectors = np.zeros((5, 32), np.float32)
    vectors[0, 0] = vectors[1, 1] = vectors[4, 2] = 1.0
    vectors[2, :2] = 1 / np.sqrt(2)
    vectors[3, 0] = -1.0
    return ItemVectors(pd.Index(list("abcde"), dtype=object), vectors, np.asarray(bias, np.float32))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together while chosen, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (every component and worker inherits it)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server process on loopback; yields its endpoint URL.

    Credentials are dummies the server accepts; they are set for the whole session.
    """
    port = _free_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the S3 server; yields (endpoint, bucket name)."""
    import uuid

    from recsys_lib.storage import S3Store

    name = f"test-{uuid.uuid4().hex[:12]}"
    S3Store(f"s3://{name}", endpoint_url=s3_server).ensure_bucket()
    return s3_server, name


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def object_store(request, tmp_path):
    """The same tests against a local directory and a bucket prefix on the S3 server."""
    from recsys_lib.storage import LocalStore, S3Store

    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return S3Store(f"s3://{bucket}/some/prefix", endpoint_url=endpoint)

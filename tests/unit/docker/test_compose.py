"""The docker/ stack agrees with the `cluster` settings profile and with the repository.

No Docker engine runs where the tests run, so this checks what can be checked without one: the
compose file parses, and every host, bucket and queue that the code expects is one the stack
provides. (`npx dclint@3.1.0 docker/compose.yaml` validates it against the Compose schema.)
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from recsys_lib.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    return load_settings(env={"RECSYS_PROFILE": "cluster", "RECSYS_DATA_ROOT": str(tmp_path_factory.mktemp("c"))})


def recsys_services(compose: dict) -> dict:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("recsys")}


def test_every_service_of_this_project_runs_the_cluster_profile(compose):
    services = recsys_services(compose)
    assert {"mlflow", "spark-master", "spark-worker", "airflow-scheduler", "airflow-worker", "gpu-worker"} <= set(
        services
    )
    for name, service in services.items():
        expected = "cluster,gpu" if name == "gpu-worker" else "cluster"
        assert service["environment"]["RECSYS_PROFILE"] == expected, name
        assert service["build"]["dockerfile"] == "docker/Dockerfile", name


def test_the_stack_provides_what_the_cluster_profile_points_at(compose, cluster):
    services = compose["services"]
    for root in (cluster.storage.work_root, cluster.storage.publish_root):
        bucket = urlparse(root).netloc
        assert f"local/{bucket}" in services["minio-init"]["entrypoint"][-1], f"{bucket} is never created"
    assert urlparse(cluster.storage.s3_endpoint_url).hostname in services
    master = urlparse(cluster.spark.master)
    assert master.hostname in services and str(master.port) in services["spark-master"]["command"]
    assert f"spark://{master.hostname}:{master.port}" in services["spark-worker"]["command"]
    tracking = urlparse(cluster.tracking.tracking_uri)
    assert tracking.hostname in services
    assert f"--port={tracking.port}" in services["mlflow"]["command"]
    assert any(h == tracking.hostname for h in _allowed_hosts(services["mlflow"]["command"]))


def _allowed_hosts(command: list[str]) -> list[str]:
    [arg] = [a for a in command if a.startswith("--allowed-hosts=")]
    return arg.split("=", 1)[1].split(",")


def test_gpu_stages_have_a_worker_on_their_queue(compose):
    gpu = compose["services"]["gpu-worker"]
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    default = compose["services"]["airflow-worker"]
    assert default["command"][default["command"].index("--queues") + 1] == "default"


def test_secrets_come_from_the_environment_not_the_files(compose):
    text = (DOCKER / "compose.yaml").read_text()
    for key in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET"):
        assert f"${{{key}" in text
        assert re.search(rf"^{key}=\s*$", (DOCKER / ".env.example").read_text(), re.M), f"{key} has a value"
    assert "docker/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_image_carries_the_project_and_its_pins():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for folder in ("recsys_lib", "jobs", "dags", "data"):
        assert f"COPY {folder} {folder}" in dockerfile
    assert "-c constraints.txt" in dockerfile
    assert "pip install -r requirements.txt -c constraints.txt" in dockerfile

"""Airflow and the MLflow UI on this machine, started and stopped as one: what `make airflow`
runs for a person and what the real-scheduler test runs without one.

Airflow 3's components run as separate processes on the data root's metadata database
(``<data_root>/airflow``, the one `make demo` uses): api-server (UI and REST API), scheduler
(LocalExecutor), dag-processor and triggerer, plus ``mlflow server`` on the tracking store. Each
is its own session, logging to ``<data_root>/airflow/stack-logs/<name>.log``; ``stop``
terminates every process of those sessions, task processes included (then kills what is left
after a grace period), so nothing outlives it.
Login is Airflow's simple auth manager with one admin user whose password is written before
the api-server starts. Only loopback is bound.
Tests: tests/integration/test_airflow_stack.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys_lib.settings import PROJECT_ROOT, Settings

HOST = "127.0.0.1"
USER = "admin"
GPU_POOL = "recsys_gpu"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# Postgres shuts down at once on SIGINT (SIGTERM waits for every client to disconnect).
STOP_SIGNALS = {"postgres": signal.SIGINT}


class StackError(RuntimeError):
    """A component did not come up (its log's last lines say why)."""


@dataclass
class LocalStack:
    settings: Settings
    airflow_port: int = 8080
    mlflow_port: int = 5000
    password: str = "admin"
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return Path(self.settings.data_root) / "airflow"

    @property
    def airflow_url(self) -> str:
        return f"http://{HOST}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def logs(self) -> Path:
        return self.home / "stack-logs"

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "RECSYS_DATA_ROOT": self.settings.data_root,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",  # each idle worker holds ~130 MB
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(self.airflow_port),
            "AIRFLOW__API__BASE_URL": self.airflow_url,  # where task processes reach the execution API
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PYTHONUNBUFFERED": "1",
            "RECSYS_DEADLINE_HOURS": os.environ.get("RECSYS_DEADLINE_HOURS", "8"),
            **self.extra_env,
        }

    # Lifecycle.
    def start(self, timeout_s: float = 180) -> "LocalStack":
        if self.processes:
            raise StackError("this stack is already running")
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self._start_services()
            self._airflow("db", "migrate")
            self._airflow("pools", "set", GPU_POOL, "1", "GPU stages (train, embed_items): one at a time")
            (self.home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({USER: self.password}))
            airflow = str(Path(sys.executable).with_name("airflow"))
            for name in COMPONENTS:
                extra = ["--skip-serve-logs"] if name in ("scheduler", "triggerer") else []
                self._spawn(name, [airflow, name, *extra])
            self._start_workers()
            mlflow = str(Path(sys.executable).with_name("mlflow"))
            self._spawn("mlflow", [mlflow, "server", *self._mlflow_store_args(),
                                   "--host", HOST, "--port", str(self.mlflow_port), "--workers", "1"])  # fmt: skip
            self._wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 20) -> None:
        """Stop the components in the reverse of their start order (the databases last), each by
        signalling its whole session and killing what is left after ``grace_s``."""
        for name, process in reversed(self.processes.items()):
            _signal_group(process, STOP_SIGNALS.get(name, signal.SIGTERM))
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # stragglers of the session (executor workers)
            process.wait()
        self.processes.clear()

    # What the cluster shape changes (ClusterStack).
    def _start_services(self) -> None:
        """Services Airflow and MLflow need before they start: none here (SQLite, local files)."""

    def _start_workers(self) -> None:
        """Task workers of their own: none with the LocalExecutor (the scheduler runs tasks)."""

    def _mlflow_store_args(self) -> list[str]:
        return ["--backend-store-uri", self.settings.tracking.tracking_uri]

    def __enter__(self) -> "LocalStack":
        return self if self.processes else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Airflow's REST API.
    def token(self) -> str:
        body = {"username": USER, "password": self.password}
        return self._request("POST", f"{self.airflow_url}/auth/token", body)["access_token"]

    def api(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict[str, Any]:
        """A call to ``/api/v2/<path>`` as the admin user."""
        headers = {"Authorization": f"Bearer {token or self.token()}"}
        return self._request(method, f"{self.airflow_url}/api/v2/{path}", body, headers)

    def trigger(self, dag_id: str, conf: dict | None = None, logical_date: str | None = None) -> str:
        """Unpause and trigger a DAG run; returns its run id."""
        token = self.token()
        self.api("PATCH", f"dags/{dag_id}", {"is_paused": False}, token)
        run = self.api("POST", f"dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf or {}}, token)
        return run["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 900) -> dict[str, Any]:
        """Poll until the run finishes; returns it (its ``state`` says how)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            run = self.dag_run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(3)
        raise TimeoutError(f"{dag_id} run {run_id} still {run['state']} after {timeout_s:.0f}s; logs: {self.logs}")

    # Internals.
    def _airflow(self, *args: str) -> None:
        airflow = str(Path(sys.executable).with_name("airflow"))
        done = subprocess.run([airflow, *args], env=self.env(), capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise StackError(f"airflow {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(command, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        log.close()

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = ["airflow", "mlflow"]
        while waiting and time.monotonic() < deadline:
            self.check_alive()
            if "airflow" in waiting and _healthy_airflow(self.airflow_url):
                waiting.remove("airflow")
            if "mlflow" in waiting and _answers(f"{self.mlflow_url}/health"):
                waiting.remove("mlflow")
            time.sleep(1)
        if waiting:
            raise StackError(f"{', '.join(waiting)} not healthy after {timeout_s:.0f}s; logs: {self.logs}")

    def check_alive(self) -> None:
        """Raise StackError, with the end of its log, if a component has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise StackError(f"{name} exited with {process.returncode}:\n{tail}")

    @staticmethod
    def _request(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise StackError(f"{method} {url}: HTTP {e.code}: {e.read()[:1000].decode(errors='replace')}") from None


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """Signal every process of the component's session: its own group and the groups its task
    runners start (a LocalExecutor task process leads a group of its own in the same session)."""
    import psutil

    for other in psutil.process_iter():
        try:
            if os.getsid(other.pid) == process.pid:
                other.send_signal(sig)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _healthy_airflow(url: str) -> bool:
    """The metadatabase, scheduler and dag-processor all report healthy."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=3) as response:
            health = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    parts = ("metadatabase", "scheduler", "dag_processor")
    return all(health.get(part, {}).get("status") == "healthy" for part in parts)


# The cluster profile's shape on this machine: `make cluster-local`.
PUBLISH_BUCKET = "recsys-published"
MLFLOW_BUCKET = "recsys-mlflow"


@dataclass(frozen=True)
class ClusterPorts:
    """Loopback ports of the services (off the usual ones, so a system Postgres or Redis can stay)."""

    postgres: int = 15432
    redis: int = 16379
    s3: int = 19000
    spark: int = 17077
    spark_ui: int = 18081
    spark_worker_ui: int = 18082


@dataclass
class ClusterStack(LocalStack):
    """The compose stack (docker/) started from Debian and PyPI packages on loopback, running the
    ``cluster`` profile: Airflow with the CeleryExecutor on PostgreSQL and Redis and a Celery
    worker, a Spark standalone master and worker, and ``mlflow server`` on PostgreSQL with its
    artefacts in an S3 server (moto, standing in for MinIO) that also holds the published tables.

    One difference from the compose stack: the work root (raw drops, features, run state) is a
    folder, ``<data_root>/cluster/work``, as on a shared filesystem, because Spark's s3a
    connector (hadoop-aws) comes from Maven Central, which this machine cannot reach.
    State lives under ``<data_root>/cluster``; the S3 server keeps its objects in memory, so
    published tables and model artefacts last as long as the stack does. Run as root, Postgres
    runs as the ``postgres`` user, which must be able to reach the data root.
    Tests: tests/integration/test_cluster_local.py.
    """

    ports: ClusterPorts = field(default_factory=ClusterPorts)
    spark_worker_cores: int = 2
    spark_worker_memory: str = "2g"

    @property
    def root(self) -> Path:
        return Path(self.settings.data_root) / "cluster"

    @property
    def home(self) -> Path:
        return self.root / "airflow"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.ports.s3}"

    @property
    def spark_url(self) -> str:
        return f"spark://{HOST}:{self.ports.spark}"

    @property
    def spark_ui_url(self) -> str:
        return f"http://{HOST}:{self.ports.spark_ui}"

    def env(self) -> dict[str, str]:
        secrets = self._secrets()
        postgres = f"recsys:{secrets['postgres_password']}@{HOST}:{self.ports.postgres}"
        return {
            **super().env(),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__FERNET_KEY": secrets["fernet_key"],
            "AIRFLOW__API__SECRET_KEY": secrets["api_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets["jwt_secret"],
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{postgres}/airflow",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{HOST}:{self.ports.redis}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{postgres}/airflow",
            "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://{postgres}/mlflow",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "AWS_ACCESS_KEY_ID": "recsys-local",
            "AWS_SECRET_ACCESS_KEY": "recsys-local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "SPARK_LOCAL_IP": HOST,
            "PYSPARK_PYTHON": sys.executable,
            "RECSYS_DATA_ROOT": str(self.root),
            "RECSYS_PROFILE": "cluster",
            "RECSYS__STORAGE__WORK_ROOT": str(self.root / "work"),
            "RECSYS__STORAGE__PUBLISH_ROOT": f"s3://{PUBLISH_BUCKET}",
            "RECSYS__STORAGE__S3_ENDPOINT_URL": self.s3_url,
            "RECSYS__SPARK__MASTER": self.spark_url,
            "RECSYS__TRACKING__TRACKING_URI": self.mlflow_url,
            **self.extra_env,
        }

    def recsys_settings(self) -> Settings:
        """The settings every task of this stack runs with."""
        from recsys_lib.settings import load_settings

        return load_settings(env=self.env())

    def spark_state(self) -> dict[str, Any]:
        """The Spark master's own account (workers, applications), from its web UI's JSON."""
        try:
            with urllib.request.urlopen(f"{self.spark_ui_url}/json/", timeout=5) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    def _secrets(self) -> dict[str, str]:
        """Passwords and keys made on the first start and kept (0600): Airflow's Fernet key must
        stay the same for what it encrypted in its database."""
        path = self.root / "secrets.json"
        if not path.exists():
            import secrets

            from cryptography.fernet import Fernet

            values = {"postgres_password": secrets.token_urlsafe(18), "fernet_key": Fernet.generate_key().decode(),
                      "api_secret_key": secrets.token_urlsafe(32), "jwt_secret": secrets.token_urlsafe(32)}  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                json.dump(values, f)
        return json.loads(path.read_text())

    def _start_services(self) -> None:
        import pyspark

        self._start_postgres()
        (self.root / "redis").mkdir(exist_ok=True)
        self._spawn("redis", ["redis-server", "--bind", HOST, "--port", str(self.ports.redis), "--save", "",
                              "--appendonly", "no", "--dir", str(self.root / "redis")])  # fmt: skip
        self._spawn("s3", [str(Path(sys.executable).with_name("moto_server")), "-H", HOST, "-p", str(self.ports.s3)])
        spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
        ports = self.ports
        self._spawn("spark-master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", HOST,
                                     "--port", str(ports.spark), "--webui-port", str(ports.spark_ui)])  # fmt: skip
        self._create_databases()
        self._wait_for_port("redis", self.ports.redis)
        self._wait_for_port("s3", self.ports.s3)
        self._create_buckets()
        self._wait_for_port("spark-master", self.ports.spark)
        self._spawn("spark-worker", [spark_class, "org.apache.spark.deploy.worker.Worker", self.spark_url,
                                     "--host", HOST, "--cores", str(self.spark_worker_cores),
                                     "--memory", self.spark_worker_memory, "--webui-port", str(ports.spark_worker_ui),
                                     "--work-dir", str(self.root / "spark")])  # fmt: skip
        self._wait_until("a Spark worker registered", lambda: bool(self.spark_state().get("aliveworkers")))

    def _start_workers(self) -> None:
        airflow = str(Path(sys.executable).with_name("airflow"))
        self._spawn("celery-worker", [airflow, "celery", "worker", "--concurrency", "2", "--skip-serve-logs",
                                      "--without-gossip", "--without-mingle"])  # fmt: skip

    def _mlflow_store_args(self) -> list[str]:
        # The backend store's URI (with its password) comes from MLFLOW_BACKEND_STORE_URI, not argv.
        return ["--artifacts-destination", f"s3://{MLFLOW_BUCKET}"]

    def _start_postgres(self) -> None:
        data = self.root / "postgres"
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        bin_dir = _postgres_bin()
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True, mode=0o700)
            password = self.root / "postgres-password.tmp"
            password.write_text(self._secrets()["postgres_password"])
            if as_postgres:
                for path in (data, password):
                    shutil.chown(path, "postgres", "postgres")
            try:
                done = subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "recsys",
                                       f"--pwfile={password}", "--auth-host=scram-sha-256", "--auth-local=peer",
                                       "--encoding=UTF8", "--no-locale"],
                                      capture_output=True, text=True, timeout=120)  # fmt: skip
            finally:
                password.unlink()
            if done.returncode != 0:
                hint = " (as root, the postgres user must be able to reach the data root)" if as_postgres else ""
                raise StackError(f"initdb failed{hint}:\n{(done.stdout + done.stderr)[-2000:]}")
        server = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.ports.postgres)]
        self._spawn("postgres", [*as_postgres, *server, "-c", f"listen_addresses={HOST}",
                                 "-c", "unix_socket_directories="])  # fmt: skip

    def _create_databases(self) -> None:
        """Airflow's and MLflow's databases, once Postgres accepts connections."""
        import psycopg2

        password = self._secrets()["postgres_password"]

        def connect():
            try:
                return psycopg2.connect(host=HOST, port=self.ports.postgres, user="recsys", password=password,
                                        dbname="postgres", connect_timeout=3)  # fmt: skip
            except psycopg2.OperationalError:
                return None

        connection = self._wait_until("Postgres accepting connections", connect)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                for name in ("airflow", "mlflow"):
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cursor.fetchone() is None:
                        cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()

    def _create_buckets(self) -> None:
        import boto3

        env = self.env()
        s3 = boto3.client("s3", endpoint_url=self.s3_url, region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in {PUBLISH_BUCKET, MLFLOW_BUCKET} - existing:
            s3.create_bucket(Bucket=bucket)

    def _wait_for_port(self, name: str, port: int) -> None:
        def listening() -> bool:
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                return True
            except OSError:
                return False

        self._wait_until(f"{name} listening on {port}", listening)

    def _wait_until(self, what: str, ready, timeout_s: float = 120):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if result := ready():
                return result
            time.sleep(0.3)
        raise StackError(f"no {what} after {timeout_s:.0f}s; logs: {self.logs}")


def _postgres_bin() -> Path:
    """Debian's versioned server binaries (/usr/lib/postgresql/<major>/bin), newest first; else PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]), reverse=True)
    if found:
        return found[0].parent
    if on_path := shutil.which("postgres"):
        return Path(on_path).parent
    raise StackError("no PostgreSQL server: install it (apt-get install postgresql); make test does as root")

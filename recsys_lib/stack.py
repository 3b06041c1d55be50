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
import signal
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
        self._airflow("db", "migrate")
        self._airflow("pools", "set", GPU_POOL, "1", "GPU stages (train, embed_items): one at a time")
        (self.home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({USER: self.password}))
        airflow = str(Path(sys.executable).with_name("airflow"))
        try:
            for name in COMPONENTS:
                extra = ["--skip-serve-logs"] if name in ("scheduler", "triggerer") else []
                self._spawn(name, [airflow, name, *extra])
            mlflow = str(Path(sys.executable).with_name("mlflow"))
            self._spawn("mlflow", [mlflow, "server", "--backend-store-uri", self.settings.tracking.tracking_uri,
                                   "--host", HOST, "--port", str(self.mlflow_port), "--workers", "1"])  # fmt: skip
            self._wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 20) -> None:
        """Terminate every component's process group; kill what is left after ``grace_s``."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # stragglers of the group (executor workers)
            process.wait()
        self.processes.clear()

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

"""Alerts: a failed nightly task or a missed deadline, told to a person.

The DAG calls ``task_failed`` as every task's ``on_failure_callback`` (after its last retry) and
``deadline_missed`` from its ``DeadlineAlert``. Each alert is one ERROR log line (in the task or
scheduler log) and, when ``alerts.webhook_url`` is set, one JSON POST to it: Slack and Teams
incoming webhooks, Alertmanager-style receivers and plain HTTP endpoints all take a JSON body with
a ``text`` field. A webhook that cannot be reached is logged, never raised: an alert must not
turn into a second failure.
Tests: tests/unit/recsys_lib/test_alerts.py (a real HTTP server on loopback).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from recsys_lib.settings import AlertSettings, load_settings

log = logging.getLogger(__name__)


def task_failed(context: dict[str, Any]) -> dict[str, Any]:
    """``on_failure_callback``: which task of which run failed, why, and where its log is."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    error = context.get("exception")
    alert = {
        "event": "task_failed",
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
        "ds": context.get("ds"),
        "try_number": getattr(ti, "try_number", None),
        "error": f"{type(error).__name__}: {error}" if error is not None else None,
        "log_url": getattr(ti, "log_url", None),
    }
    alert["text"] = (f"recsys: task {alert['dag_id']}.{alert['task_id']} failed in run {alert['run_id']}"
                     f" (ds {alert['ds']}): {alert['error'] or 'no exception recorded'}")  # fmt: skip
    return notify(alert)


def deadline_missed(context: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """A ``DeadlineAlert`` callback: the nightly run has not finished in time."""
    context = context or {}
    dag_run = context.get("dag_run") or {}
    run_id = dag_run.get("run_id") if isinstance(dag_run, dict) else getattr(dag_run, "run_id", None)
    dag_id = dag_run.get("dag_id") if isinstance(dag_run, dict) else getattr(dag_run, "dag_id", None)
    alert = {"event": "deadline_missed", "dag_id": dag_id or kwargs.get("dag_id"), "run_id": run_id,
             "deadline": str(context.get("deadline") or kwargs.get("deadline") or "")}  # fmt: skip
    alert["text"] = f"recsys: run {alert['run_id']} of {alert['dag_id']} missed its deadline {alert['deadline']}"
    return notify(alert)


def notify(alert: dict[str, Any], cfg: AlertSettings | None = None) -> dict[str, Any]:
    """Log the alert and POST it to ``alerts.webhook_url`` when one is set; returns the alert."""
    cfg = cfg or load_settings().alerts
    log.error("ALERT %s", json.dumps(alert, default=str))
    if not cfg.webhook_url:
        return alert
    host = urllib.parse.urlsplit(cfg.webhook_url).netloc  # the URL itself may hold a token: not logged
    request = urllib.request.Request(
        cfg.webhook_url,
        data=json.dumps(alert, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
            log.info("alert sent to %s: HTTP %s", host, response.status)
    except (urllib.error.URLError, OSError) as e:
        log.warning("could not send the alert to %s: %s", host, e)
    return alert

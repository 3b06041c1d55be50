"""Alerts reach a real HTTP endpoint on loopback as JSON, and an unreachable one is only logged."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

from recsys_lib import alerts
from recsys_lib.settings import AlertSettings
from tests.conftest import _free_port


def webhook():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def test_a_failed_task_is_posted_to_the_webhook(monkeypatch):
    server, received = webhook()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hooks/secret-token"
        monkeypatch.setenv("RECSYS__ALERTS__WEBHOOK_URL", url)
        ti = SimpleNamespace(dag_id="recsys_nightly", task_id="train", run_id="manual__1", try_number=3,
                             log_url="http://airflow/log")  # fmt: skip
        sent = alerts.task_failed({"ti": ti, "ds": "2026-01-01", "exception": ValueError("bad rows")})
    finally:
        server.shutdown()
    assert received == [sent]
    assert sent["task_id"] == "train" and sent["error"] == "ValueError: bad rows" and sent["try_number"] == 3
    assert sent["text"] == (
        "recsys: task recsys_nightly.train failed in run manual__1 (ds 2026-01-01): ValueError: bad rows"
    )


def test_an_unreachable_webhook_is_logged_not_raised(caplog):
    cfg = AlertSettings(webhook_url=f"http://127.0.0.1:{_free_port()}/token", timeout_s=2.0)
    alert = alerts.notify({"event": "deadline_missed", "text": "late"}, cfg)
    assert alert["event"] == "deadline_missed"
    assert "could not send the alert to 127.0.0.1" in caplog.text and "/token" not in caplog.text


def test_a_missed_deadline_names_the_run(caplog):
    run = {"dag_id": "recsys_nightly", "run_id": "scheduled__2026-01-01"}
    alert = alerts.deadline_missed({"dag_run": run, "deadline": "2026-01-01T08:00:00Z"})
    assert alert["text"] == (
        "recsys: run scheduled__2026-01-01 of recsys_nightly missed its deadline 2026-01-01T08:00:00Z"
    )
    assert "ALERT" in caplog.text

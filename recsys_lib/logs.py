"""Logging defaults shared by every entry point, and progress lines for long loops."""

from __future__ import annotations

import logging
import os
import time


def quiet_library_logs() -> None:
    """Progress bars and per-call INFO lines of MLflow, FAISS, py4j, bm25s and the ONNX exporter's
    passes (a hundred lines per export) drown the pipeline's own log."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "faiss.loader", "py4j", "bm25s", "onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Progress:
    """Rate and ETA of a long loop as plain log lines every ``every_s`` seconds (and a last one
    at the end): what a scheduler's task log shows well, unlike a carriage-return bar. Loops
    shorter than ``every_s`` log nothing.

        progress = Progress(log, "encode", total=len(docs), unit="items")
        for batch in batches:
            ...
            progress.advance(len(batch))
    """

    def __init__(self, logger: logging.Logger, what: str, total: int, unit: str = "items", every_s: float = 10.0):
        self.logger, self.what, self.total, self.unit, self.every_s = logger, what, total, unit, every_s
        self.done = 0
        self.started = self.last = time.perf_counter()
        self.logged = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or (self.done >= self.total and self.logged):
            self.last, self.logged = now, True
            self.logger.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.started, 1e-9)
        rate = self.done / elapsed
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        if self.done >= self.total:
            return f"{self.what}: {self.done:,} {self.unit} in {_duration(elapsed)}, {rate:,.0f} {self.unit}/s"
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return (f"{self.what}: {self.done:,}/{self.total:,} {self.unit}{share}, {rate:,.0f} {self.unit}/s, "
                f"ETA {_duration(eta)}")  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

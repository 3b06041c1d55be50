"""Logging defaults shared by every entry point."""

from __future__ import annotations

import logging
import os


def quiet_library_logs() -> None:
    """Progress bars and per-call INFO lines of MLflow, FAISS and py4j drown the pipeline's own log."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "faiss.loader", "py4j"):
        logging.getLogger(name).setLevel(logging.WARNING)

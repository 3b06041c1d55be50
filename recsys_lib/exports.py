"""Exports of the published tables for downstream systems (used by the example downstream DAG).

Tests: tests/integration/test_downstream.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from recsys_lib.reader import PublishedTables
from recsys_lib.schema import ITEM_COL, RANK_COL, USER_COL
from recsys_lib.settings import Settings
from recsys_lib.storage import OutputTable, Storage

log = logging.getLogger(__name__)


def export_user_topn_jsonl(settings: Settings) -> dict[str, Any]:
    """Write the live user top-N as JSON lines (one user per line, items best first) to
    ``exports/user_topn/<version>.jsonl`` in the work store; the same version is written once."""
    tables = PublishedTables.from_settings(settings)
    manifest = tables.manifest()
    version = manifest["version"]
    storage = Storage(settings)
    key = Storage.user_topn_export(version)
    if not storage.work.exists(key):
        df = tables.table(OutputTable.USER_TOPN, version, columns=[USER_COL, RANK_COL, ITEM_COL]).to_pandas()
        df = df.sort_values([USER_COL, RANK_COL], kind="stable")
        lines = (
            json.dumps({USER_COL: user, "items": items, "version": version})
            for user, items in df.groupby(USER_COL, sort=False)[ITEM_COL].agg(list).items()
        )
        storage.work.write_bytes(key, ("\n".join(lines) + "\n").encode())
    log.info("exported %s to %s", version, storage.work.uri(key))
    rows = manifest["tables"][OutputTable.USER_TOPN]["rows"]
    return {"version": version, "export": storage.work.uri(key), "rows": rows}

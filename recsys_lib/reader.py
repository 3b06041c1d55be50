"""Reading the published tables, for downstream systems that want more than plain Parquet.

    tables = PublishedTables.from_settings(load_settings())
    tables.recommendations_for("42")      # one user's ranked rows, as pandas
    tables.similar_items("318")
    tables.table("user_topn")             # the whole table as Arrow

Every read resolves ``latest.json`` once per call, so a call sees one version, never a mix.
Tests: tests/unit/recsys_lib/test_reader.py, tests/integration.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_lib.errors import NothingPublished
from recsys_lib.publish import read_latest
from recsys_lib.schema import ITEM_COL, RANK_COL, USER_COL
from recsys_lib.settings import Settings
from recsys_lib.storage import ObjectStore, OutputTable, Storage, open_store


class PublishedTables:
    def __init__(self, store: ObjectStore):
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings) -> "PublishedTables":
        return cls(open_store(settings.storage.publish_root, settings.storage))

    def manifest(self, version: str | None = None) -> dict[str, Any]:
        if version is not None:
            import json

            return json.loads(self.store.read_bytes(Storage.published_manifest(version)))
        manifest = read_latest(self.store)
        if manifest is None:
            raise NothingPublished(f"nothing published yet at {self.store.uri('')}")
        return manifest

    def files(self, name: str, version: str | None = None) -> list[str]:
        """URIs of a table's Parquet files in the live (or given) version."""
        return [self.store.uri(f["key"]) for f in self.manifest(version)["tables"][name]["files"]]

    def table(self, name: str, version: str | None = None, filters=None, columns=None, key=None) -> pa.Table:
        """A table of the live (or given) version. ``key`` reads only the file whose key range
        holds it; ``filters`` skip row groups by their statistics, so one key's rows cost a
        footer and a row group, not the whole table."""
        manifest = self.manifest(version)
        files = manifest["tables"][name]["files"]
        if key is not None:
            files = [f for f in files if f.get("min_key") is None or f["min_key"] <= key <= f["max_key"]] or files[:1]
        parts = []
        for f in files:
            filesystem, path = self.store.arrow_file(f["key"])
            parts.append(pq.read_table(path, filesystem=filesystem, filters=filters, columns=columns))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def recommendations_for(self, user_id: str, version: str | None = None) -> pd.DataFrame:
        user_id = str(user_id)
        filters = [(USER_COL, "=", user_id)]
        rows = self.table(OutputTable.USER_TOPN, version, filters=filters, key=user_id).to_pandas()
        return rows.sort_values(RANK_COL).reset_index(drop=True)

    def similar_items(self, item_id: str, version: str | None = None) -> pd.DataFrame:
        item_id = str(item_id)
        filters = [(ITEM_COL, "=", item_id)]
        rows = self.table(OutputTable.ITEM_SIMILAR, version, filters=filters, key=item_id).to_pandas()
        return rows.sort_values(RANK_COL).reset_index(drop=True)

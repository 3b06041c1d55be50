"""Publishing the recommendation tables: checks, immutable versions, the ``latest`` pointer.

Layout in the published store::

    versions/<version>/user_topn/part-00000.parquet
    versions/<version>/item_similar/part-00000.parquet
    versions/<version>/_manifest.json      written after every table file
    latest.json                            {"version": ..., "manifest": ...}, switched last

A version id is ``<ds>_<digest of the table files>``, so republishing identical tables is a no-op
and a version folder never changes once its manifest exists. Readers go through ``latest.json``
to a manifest and read only the files it lists, so they see the old version or the new one,
never a mix, on local disks and S3 alike (each is one atomic object write).
Tests: tests/unit/test_publish.py (local and S3), tests/integration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_lib.schema import (
    ITEM_COL,
    ITEM_SIMILAR_SCHEMA,
    RANK_COL,
    SCORE_COL,
    SEEN_COL,
    SIMILAR_ITEM_COL,
    USER_COL,
    USER_TOPN_SCHEMA,
)
from recsys_lib.storage import ObjectStore

LATEST_KEY = "latest.json"
MANIFEST_FILE = "_manifest.json"
TABLES = {"user_topn": USER_TOPN_SCHEMA, "item_similar": ITEM_SIMILAR_SCHEMA}
MANIFEST_FORMAT = 1


def version_prefix(version: str) -> str:
    return f"versions/{version}"


def manifest_key(version: str) -> str:
    return f"{version_prefix(version)}/{MANIFEST_FILE}"


# Checks: each returns human-readable failures; an empty list means the table may go live.
def check_user_topn(
    topn: pd.DataFrame, histories: pd.DataFrame, catalogue: set[str] | pd.Index, schema: pa.Schema | None = None
) -> list[str]:
    """Contract checks of a user top-N table before publish.

    Args:
        topn: the table (user_id, rank, item_id, score, ...).
        histories: user_id and ``seen`` (every item the user interacted with up to ds); each
            of these users must be covered.
        catalogue: item ids that may be recommended.
    """
    failures = []
    if schema is not None and not schema.equals(USER_TOPN_SCHEMA):
        failures.append(f"schema differs from the contract: {schema} != {USER_TOPN_SCHEMA}")
    failures += _check_ranks(topn, USER_COL, ITEM_COL)
    unknown = ~topn[ITEM_COL].isin(catalogue)
    if unknown.any():
        example = topn.loc[unknown, ITEM_COL].iloc[0]
        failures.append(f"{int(unknown.sum())} rows recommend items outside the catalogue, e.g. {example}")
    seen = histories[[USER_COL, SEEN_COL]].explode(SEEN_COL).rename(columns={SEEN_COL: ITEM_COL})
    overlap = topn[[USER_COL, ITEM_COL]].merge(seen, on=[USER_COL, ITEM_COL])
    if len(overlap):
        u, i = overlap.iloc[0]
        failures.append(f"{len(overlap)} rows recommend an item the user has already seen, e.g. user {u} item {i}")
    missing = set(histories[USER_COL]) - set(topn[USER_COL])
    if missing:
        failures.append(f"{len(missing)} active users have no recommendations, e.g. {sorted(missing)[:3]}")
    return failures


def check_item_similar(
    similar: pd.DataFrame, catalogue: set[str] | pd.Index, schema: pa.Schema | None = None
) -> list[str]:
    failures = []
    if schema is not None and not schema.equals(ITEM_SIMILAR_SCHEMA):
        failures.append(f"schema differs from the contract: {schema} != {ITEM_SIMILAR_SCHEMA}")
    failures += _check_ranks(similar, ITEM_COL, SIMILAR_ITEM_COL)
    itself = similar[ITEM_COL] == similar[SIMILAR_ITEM_COL]
    if itself.any():
        failures.append(f"{int(itself.sum())} rows list an item as similar to itself")
    unknown = ~similar[SIMILAR_ITEM_COL].isin(catalogue)
    if unknown.any():
        failures.append(f"{int(unknown.sum())} rows point to items outside the catalogue")
    return failures


def _check_ranks(table: pd.DataFrame, key: str, value: str) -> list[str]:
    failures = []
    if len(table) == 0:
        return ["the table is empty"]
    if table[[key, value, RANK_COL, SCORE_COL]].isna().any().any():
        failures.append("null values in key columns")
    if not np.isfinite(table[SCORE_COL].to_numpy(dtype=np.float64)).all():
        failures.append(
            f"{int((~np.isfinite(table[SCORE_COL].to_numpy(dtype=np.float64))).sum())} scores are not finite"
        )
    dupes = table.duplicated([key, value])
    if dupes.any():
        failures.append(f"{int(dupes.sum())} duplicate ({key}, {value}) pairs")
    ranks = table.sort_values([key, RANK_COL])
    expected = ranks.groupby(key).cumcount() + 1
    bad = ranks[RANK_COL].to_numpy() != expected.to_numpy()
    if bad.any():
        failures.append(f"ranks are not 1..N per {key} (e.g. {key} {ranks.loc[bad, key].iloc[0]})")
    return failures


# Publishing
def table_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode())
        h.update(hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def publish_version(
    store: ObjectStore,
    ds: str,
    tables: dict[str, pa.Table],
    model_version: str,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Write ``tables`` as a new immutable version, then its manifest, then switch ``latest``.

    Returns the manifest. Publishing tables identical to an existing version reuses it.
    """
    files = {
        name: _parquet_bytes(table, sort_key=USER_COL if name == "user_topn" else ITEM_COL)
        for name, table in tables.items()
    }
    version = f"{ds}_{table_digest(files)[:12]}"
    if store.exists(manifest_key(version)):
        manifest = json.loads(store.read_bytes(manifest_key(version)))
    else:
        entries = {}
        for name, data in files.items():
            key = f"{version_prefix(version)}/{name}/part-00000.parquet"
            store.write_bytes(key, data)
            meta = pq.read_metadata(pa.BufferReader(data))
            entries[name] = {
                "files": [{"key": key, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}],
                "rows": meta.num_rows,
                "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in tables[name].schema],
            }
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "ds": ds,
            "model_version": model_version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "tables": entries,
            **metadata,
        }
        store.write_bytes(manifest_key(version), json.dumps(manifest, indent=2, sort_keys=True).encode())
    switch_latest(store, manifest)
    return manifest


def switch_latest(store: ObjectStore, manifest: dict[str, Any]) -> None:
    pointer = {
        "version": manifest["version"],
        "manifest": manifest_key(manifest["version"]),
        "ds": manifest["ds"],
        "model_version": manifest["model_version"],
    }
    store.write_bytes(LATEST_KEY, json.dumps(pointer, indent=2).encode())


def read_latest(store: ObjectStore) -> dict[str, Any] | None:
    """The live manifest, or None before the first publish."""
    if not store.exists(LATEST_KEY):
        return None
    pointer = json.loads(store.read_bytes(LATEST_KEY))
    return json.loads(store.read_bytes(pointer["manifest"]))


def _parquet_bytes(table: pa.Table, sort_key: str) -> bytes:
    """Sorted by key then rank, so a reader's filter on one key touches few row groups."""
    table = table.sort_by([(sort_key, "ascending"), (RANK_COL, "ascending")])
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=128 * 1024, write_statistics=True)
    return buf.getvalue()

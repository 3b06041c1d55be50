"""Publishing the recommendation tables: checks, immutable versions, the ``latest`` pointer.

Layout in the published store::

    versions/<version>/user_topn/part-00000.parquet ...   sorted by (user_id, rank), cut at key boundaries
    versions/<version>/item_similar/part-00000.parquet ...
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
    REASON_ITEM_COL,
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
MANIFEST_FORMAT = 2
SORT_KEYS = {"user_topn": USER_COL, "item_similar": ITEM_COL}
ROWS_PER_FILE = 10_000_000  # about 100-200 MB of Parquet per file
ROW_GROUP_ROWS = 128 * 1024  # a reader of one key decodes one row group of this many rows


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
        failures.append(
            f"{int(unknown.sum())} rows recommend items outside the active catalogue (unknown or blocked), "
            f"e.g. {example}"
        )
    seen = histories[[USER_COL, SEEN_COL]].explode(SEEN_COL).rename(columns={SEEN_COL: ITEM_COL})
    overlap = topn[[USER_COL, ITEM_COL]].merge(seen, on=[USER_COL, ITEM_COL])
    if len(overlap):
        u, i = overlap.iloc[0]
        failures.append(f"{len(overlap)} rows recommend an item the user has already seen, e.g. user {u} item {i}")
    if REASON_ITEM_COL in topn:
        explained = topn.loc[topn[REASON_ITEM_COL].notna(), [USER_COL, REASON_ITEM_COL]]
        known = explained.merge(seen.rename(columns={ITEM_COL: REASON_ITEM_COL}), on=[USER_COL, REASON_ITEM_COL])
        if len(known) < len(explained):
            failures.append(f"{len(explained) - len(known)} rows give a reason item outside the user's history")
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


def catalogue_coverage(topn: pd.DataFrame, catalogue_size: int) -> float:
    """Share of the catalogue recommended to at least one user."""
    return topn[ITEM_COL].nunique() / max(1, catalogue_size)


def mean_overlap(topn: pd.DataFrame, previous: pd.DataFrame) -> float:
    """Mean over users present in both tables of |new top-N ∩ old top-N| / |new top-N|."""
    both = topn[[USER_COL, ITEM_COL]].merge(previous[[USER_COL, ITEM_COL]], on=[USER_COL, ITEM_COL])
    shared_users = set(previous[USER_COL])
    sizes = topn[topn[USER_COL].isin(shared_users)].groupby(USER_COL).size()
    if sizes.empty:
        return 1.0
    hits = both.groupby(USER_COL).size().reindex(sizes.index, fill_value=0)
    return float((hits / sizes).mean())


def check_against_previous(
    topn: pd.DataFrame,
    previous: pd.DataFrame | None,
    catalogue_size: int,
    min_coverage: float,
    max_coverage_drop: float,
    min_overlap: float,
) -> list[str]:
    """Coverage and overlap bounds of a new user top-N table relative to the live one."""
    failures = []
    coverage = catalogue_coverage(topn, catalogue_size)
    if coverage < min_coverage:
        failures.append(f"catalogue coverage {coverage:.4f} is below publish.min_coverage {min_coverage}")
    if previous is None or len(previous) == 0:
        return failures
    before = catalogue_coverage(previous, catalogue_size)
    if coverage < before * (1 - max_coverage_drop):
        failures.append(
            f"catalogue coverage fell from {before:.4f} to {coverage:.4f}, more than publish.max_coverage_drop "
            f"({max_coverage_drop:.0%})"
        )
    overlap = mean_overlap(topn, previous)
    if overlap < min_overlap:
        failures.append(f"mean overlap with the live top-N is {overlap:.4f}, below publish.min_overlap {min_overlap}")
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
    rows_per_file: int = ROWS_PER_FILE,
) -> dict[str, Any]:
    """Write ``tables`` as a new immutable version, then its manifest, then switch ``latest``.

    Each table is sorted by its key and rank and cut into files of ``rows_per_file`` rows at key
    boundaries; the manifest lists every file with its key range, so a reader of one key opens
    one file and, by row-group statistics, one row group. Returns the manifest. Publishing
    tables identical to an existing version reuses it.
    """
    parts = {name: _parquet_parts(table, SORT_KEYS[name], rows_per_file) for name, table in tables.items()}
    files = {f"{name}/{n}": data for name, chunks in parts.items() for n, (data, _, _) in enumerate(chunks)}
    version = f"{ds}_{table_digest(files)[:12]}"
    if store.exists(manifest_key(version)):
        manifest = json.loads(store.read_bytes(manifest_key(version)))
    else:
        entries = {}
        for name, chunks in parts.items():
            listed = []
            for n, (data, first, last) in enumerate(chunks):
                key = f"{version_prefix(version)}/{name}/part-{n:05d}.parquet"
                store.write_bytes(key, data)
                rows = pq.read_metadata(pa.BufferReader(data)).num_rows
                listed.append(
                    {
                        "key": key,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "bytes": len(data),
                        "rows": rows,
                        "min_key": first,
                        "max_key": last,
                    }
                )
            entries[name] = {
                "files": listed,
                "rows": sum(f["rows"] for f in listed),
                "sort_key": [SORT_KEYS[name], RANK_COL],
                "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in tables[name].schema],
            }
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "ds": ds,
            "model_version": model_version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
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


def list_versions(store: ObjectStore) -> list[dict[str, Any]]:
    """Manifests of every complete version (one whose manifest exists), oldest first."""
    manifests = []
    for version in store.list_dirs("versions"):
        if store.exists(manifest_key(version)):
            manifests.append(json.loads(store.read_bytes(manifest_key(version))))
    return sorted(manifests, key=lambda m: (m["created_at"], m["version"]))


def prune_versions(store: ObjectStore, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions (never the live one, never an incomplete
    version still being written); returns the deleted version ids."""
    live = read_latest(store)
    complete = [m["version"] for m in list_versions(store)]
    doomed = [v for v in complete[: max(0, len(complete) - keep)] if live is None or v != live["version"]]
    for version in doomed:
        # The manifest first: a half-deleted version is then an incomplete one, never listed.
        store.delete_prefix(manifest_key(version))
        store.delete_prefix(version_prefix(version) + "/")
    return doomed


def verify_version(store: ObjectStore, manifest: dict[str, Any]) -> list[str]:
    """Files of a version whose bytes no longer match the manifest's checksums."""
    bad = []
    for entry in manifest["tables"].values():
        for f in entry["files"]:
            if not store.exists(f["key"]) or hashlib.sha256(store.read_bytes(f["key"])).hexdigest() != f["sha256"]:
                bad.append(f["key"])
    return bad


def rollback(store: ObjectStore, to: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Point ``latest`` back at version ``to`` (default: the one published before the live one).

    The version's files are checked against its manifest first; they are immutable, so readers
    get exactly the bytes that were live before. Returns (previous live manifest, restored one).
    """
    live = read_latest(store)
    if live is None:
        raise LookupError(f"nothing published at {store.uri('')}: nothing to roll back")
    versions = list_versions(store)
    ids = [m["version"] for m in versions]
    if to is None:
        older = ids[: ids.index(live["version"])] if live["version"] in ids else ids[:-1]
        if not older:
            raise LookupError(f"{live['version']} is the oldest version kept: nothing to roll back to")
        to = older[-1]
    if to not in ids:
        raise LookupError(f"no complete version {to!r}; kept versions: {', '.join(ids)}")
    target = versions[ids.index(to)]
    damaged = verify_version(store, target)
    if damaged:
        raise ValueError(f"version {to} does not match its manifest checksums: {damaged}")
    switch_latest(store, target)
    return live, target


def read_latest(store: ObjectStore) -> dict[str, Any] | None:
    """The live manifest, or None before the first publish."""
    if not store.exists(LATEST_KEY):
        return None
    pointer = json.loads(store.read_bytes(LATEST_KEY))
    return json.loads(store.read_bytes(pointer["manifest"]))


def _parquet_parts(table: pa.Table, sort_key: str, rows_per_file: int) -> list[tuple[bytes, str | None, str | None]]:
    """(Parquet bytes, first key, last key) per file of ``table`` sorted by key then rank; no key
    is split across files."""
    table = table.sort_by([(sort_key, "ascending"), (RANK_COL, "ascending")])
    keys = table.column(sort_key).to_numpy(zero_copy_only=False)
    cuts, start = [], 0
    while start < len(keys):
        end = min(len(keys), start + rows_per_file)
        while end < len(keys) and keys[end] == keys[end - 1]:
            end += 1
        cuts.append((start, end))
        start = end
    out = []
    for start, end in cuts or [(0, 0)]:
        buf = io.BytesIO()
        chunk = table.slice(start, end - start)
        pq.write_table(chunk, buf, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=True)
        first, last = (str(keys[start]), str(keys[end - 1])) if end > start else (None, None)
        out.append((buf.getvalue(), first, last))
    return out

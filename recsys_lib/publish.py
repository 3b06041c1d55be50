"""Publishing the recommendation tables: checks, immutable versions, the ``latest`` pointer.

Layout in the published store::

    versions/<version>/user_topn/part-00000.parquet ...   sorted by (user_id, rank), cut at key boundaries
    versions/<version>/item_similar/part-00000.parquet ...
    versions/<version>/{item_vectors,user_vectors}/part-00000.parquet ...   sorted by their key
    versions/<version>/query_encoder/query.onnx, tokenizer.json ...   artefacts (files) for services
    versions/<version>/_manifest.json      written after every table file
    latest.json                            {"version": ..., "manifest": ...}, switched last

A version id is ``<ds>_<digest of the table files>``, so republishing identical tables is a no-op
and a version folder never changes once its manifest exists (the tables name their model version,
so one model's artefacts come with them). Readers go through ``latest.json``
to a manifest and read only the files it lists, so they see the old version or the new one,
never a mix, on local disks and S3 alike (each is one atomic object write). The keys are
``recsys_lib.storage``'s; the checks a table passes first are ``recsys_lib.checks``'.
Tests: tests/unit/recsys_lib/test_publish.py (local and S3), tests/integration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_lib.errors import NothingPublished, RollbackRefused, StorageError
from recsys_lib.schema import ITEM_COL, QUERY_COL, RANK_COL, USER_COL
from recsys_lib.storage import ObjectStore, OutputTable, Storage

# Format 3: the evaluation is the typed report (recsys_lib.evaluation.report), not flat metrics.
# Format 4: "artefacts" lists files beside the tables (the query encoder), with checksums.
# Format 5: user_topn has a `source` column (history, interests or popularity); a query_topn
# table (the search log's frequent queries); the evaluation has the search and text-user segments.
MANIFEST_FORMAT = 5
SORT_KEYS = {
    OutputTable.USER_TOPN: [USER_COL, RANK_COL],
    OutputTable.ITEM_SIMILAR: [ITEM_COL, RANK_COL],
    OutputTable.QUERY_TOPN: [QUERY_COL, RANK_COL],
    OutputTable.ITEM_VECTORS: [ITEM_COL],
    OutputTable.USER_VECTORS: [USER_COL],
}
ROWS_PER_FILE = 10_000_000  # about 100-200 MB of Parquet per file
ROW_GROUP_ROWS = 128 * 1024  # a reader of one key decodes one row group of this many rows


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
    make_live: bool = True,
    artefacts: dict[str, dict[str, bytes]] | None = None,
) -> dict[str, Any]:
    """Write ``tables`` (and ``artefacts``: name -> files) as a new immutable version, then its
    manifest, then (with ``make_live``) switch ``latest`` to it.

    Each table is sorted by its key and rank and cut into files of ``rows_per_file`` rows at key
    boundaries; the manifest lists every file with its key range, so a reader of one key opens
    one file and, by row-group statistics, one row group. Returns the manifest. Publishing
    tables identical to an existing version reuses it.
    """
    parts = {name: _parquet_parts(table, SORT_KEYS[name], rows_per_file) for name, table in tables.items()}
    files = {f"{name}/{n}": data for name, chunks in parts.items() for n, (data, _, _) in enumerate(chunks)}
    version = f"{ds}_{table_digest(files)[:12]}"
    if store.exists(Storage.published_manifest(version)):
        manifest = json.loads(store.read_bytes(Storage.published_manifest(version)))
    else:
        entries = {}
        for name, chunks in parts.items():
            listed = []
            for n, (data, first, last) in enumerate(chunks):
                key = Storage.published_part(version, name, n)
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
                "sort_key": SORT_KEYS[name],
                "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in tables[name].schema],
            }
        listed_artefacts = {}
        for name, named_files in (artefacts or {}).items():
            listed = []
            for file, data in sorted(named_files.items()):
                key = Storage.published_file(version, name, file)
                store.write_bytes(key, data)
                listed.append({"key": key, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
            listed_artefacts[name] = {"files": listed}
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "ds": ds,
            "model_version": model_version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "tables": entries,
            "artefacts": listed_artefacts,
            **metadata,
        }
        store.write_bytes(Storage.published_manifest(version), json.dumps(manifest, indent=2, sort_keys=True).encode())
    if make_live:
        switch_latest(store, manifest)
    return manifest


def switch_latest(store: ObjectStore, manifest: dict[str, Any]) -> None:
    pointer = {
        "version": manifest["version"],
        "manifest": Storage.published_manifest(manifest["version"]),
        "ds": manifest["ds"],
        "model_version": manifest["model_version"],
    }
    store.write_bytes(Storage.LATEST, json.dumps(pointer, indent=2).encode())


def list_versions(store: ObjectStore) -> list[dict[str, Any]]:
    """Manifests of every complete version (one whose manifest exists), oldest ds first."""
    manifests = []
    for version in store.list_dirs(Storage.PUBLISHED_VERSIONS):
        if store.exists(Storage.published_manifest(version)):
            manifests.append(json.loads(store.read_bytes(Storage.published_manifest(version))))
    # By ds, then time: a backfill of an old day is older than every later day's version.
    return sorted(manifests, key=lambda m: (m["ds"], m["created_at"], m["version"]))


def prune_versions(store: ObjectStore, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions (never the live one, never an incomplete
    version still being written); returns the deleted version ids."""
    live = read_latest(store)
    complete = [m["version"] for m in list_versions(store)]
    doomed = [v for v in complete[: max(0, len(complete) - keep)] if live is None or v != live["version"]]
    for version in doomed:
        # The manifest first: a half-deleted version is then an incomplete one, never listed.
        store.delete_prefix(Storage.published_manifest(version))
        store.delete_prefix(Storage.published_version(version) + "/")
    return doomed


def verify_version(store: ObjectStore, manifest: dict[str, Any]) -> list[str]:
    """Files of a version whose bytes no longer match the manifest's checksums."""
    bad = []
    for entry in [*manifest["tables"].values(), *manifest.get("artefacts", {}).values()]:
        for f in entry["files"]:
            if not store.exists(f["key"]) or hashlib.sha256(store.read_bytes(f["key"])).hexdigest() != f["sha256"]:
                bad.append(f["key"])
    return bad


def rollback(
    store: ObjectStore, to: str | None = None, check: Callable[[dict[str, Any]], None] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Point ``latest`` back at version ``to`` (default: the one published before the live one).

    The version's files are checked against its manifest first, then ``check`` (the target's
    manifest) may refuse by raising; they are immutable, so readers get exactly the bytes that
    were live before. Returns (previous live manifest, restored one).
    """
    try:
        live = read_latest(store)
    except StorageError:
        if to is None:
            raise
        live = {"version": "(unreadable)"}  # repaired by pointing it at a version by name
    if live is None:
        raise NothingPublished(f"nothing published at {store.uri('')}: nothing to roll back")
    versions = list_versions(store)
    ids = [m["version"] for m in versions]
    if to is None:
        older = ids[: ids.index(live["version"])] if live["version"] in ids else ids[:-1]
        if not older:
            raise RollbackRefused(f"{live['version']} is the oldest version kept: nothing to roll back to")
        to = older[-1]
    if to not in ids:
        raise RollbackRefused(f"no complete version {to!r}; kept versions: {', '.join(ids)}")
    target = versions[ids.index(to)]
    damaged = verify_version(store, target)
    if damaged:
        raise RollbackRefused(f"version {to} does not match its manifest checksums: {damaged}")
    if check is not None:
        check(target)
    switch_latest(store, target)
    return live, target


def read_latest(store: ObjectStore) -> dict[str, Any] | None:
    """The live manifest, or None before the first publish. A pointer that cannot be read, or
    that names a manifest that is gone, is a StorageError that says how to repair it."""
    if not store.exists(Storage.LATEST):
        return None
    try:
        pointer = json.loads(store.read_bytes(Storage.LATEST))
        return json.loads(store.read_bytes(pointer["manifest"]))
    except (ValueError, KeyError, TypeError, StorageError) as e:
        raise StorageError(
            f"{store.uri(Storage.LATEST)} is unreadable or names a version that is gone ({e}); "
            "`recsys rollback --to VERSION` points it at a kept version (`recsys versions` lists them)"
        ) from None


def _parquet_parts(
    table: pa.Table, sort_key: list[str], rows_per_file: int
) -> list[tuple[bytes, str | None, str | None]]:
    """(Parquet bytes, first key, last key) per file of ``table`` sorted by ``sort_key`` (the
    key, then the rank where there is one); no key is split across files."""
    table = table.sort_by([(column, "ascending") for column in sort_key])
    keys = table.column(sort_key[0]).to_numpy(zero_copy_only=False)
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

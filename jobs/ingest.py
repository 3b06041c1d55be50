"""Ingest + validate (Spark): raw drops for ds -> typed lake partitions + quarantine.

Reads every CSV / Parquet / JSON-lines file under ``raw/{items,interactions,users}/ds=<ds>/``
(users are optional: registered users and their segments).
Rejected rows land in ``quarantine/<entity>/ds=<ds>`` with a reason; a file whose rejected share
is over ``ingest.max_reject_fraction`` stops the run before the lake is touched. Rerunning a ds
overwrites its own partitions, so the stage is idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

from recsys_lib.errors import SchemaError
from recsys_lib.schema import ITEM_COL
from recsys_lib.settings import Settings
from recsys_lib.storage import Storage
from recsys_lib.validate import (
    as_strings,
    enforce_reject_limit,
    summarize_rejects,
    validate_interactions,
    validate_items,
    validate_users,
)

log = logging.getLogger(__name__)

READERS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".jsonl.gz": "json",
}


def raw_format(key: str) -> str | None:
    for suffix, fmt in READERS.items():
        if key.lower().endswith(suffix):
            return fmt
    return None


def read_raw_drop(spark, storage: Storage, entity: str, ds: str):
    """Union of every readable file of one drop, projected to contract columns as strings.

    Returns None when the drop folder holds no data files.
    """
    from functools import reduce

    prefix = Storage.raw(entity, ds)
    frames = []
    for key in storage.work.list(prefix + "/"):
        fmt = raw_format(key)
        if fmt is None:
            continue
        path = storage.spark_path(key)
        if fmt == "csv":
            # RFC 4180 quoting: a quote inside a quoted field is written twice.
            df = spark.read.csv(path, header=True, inferSchema=False, escape='"', multiLine=True)
        elif fmt == "json":
            df = spark.read.json(path)
        else:
            df = spark.read.parquet(path)
        frames.append(as_strings(df, entity, source=storage.work.uri(key)))
    if not frames:
        return None
    return reduce(lambda a, b: a.unionByName(b), frames)


def run(settings: Settings, ds: str) -> dict[str, Any]:
    from recsys_lib.spark import get_spark

    spark = get_spark(settings, "recsys-ingest")
    storage = Storage(settings)
    summary: dict[str, Any] = {"ds": ds}

    # Items first: interactions are checked against the catalogue known up to ds.
    raw_items = read_raw_drop(spark, storage, "items", ds)
    earlier = [d for d in storage.partitions(Storage.lake("items")) if d < ds]
    if raw_items is None and not earlier:
        raise SchemaError(
            f"no item catalogue: {storage.work.uri(Storage.raw('items', ds))} holds no CSV/Parquet/JSON "
            "file and the lake has no earlier items partition"
        )
    known_items = None
    if raw_items is not None:
        raw_items = raw_items.persist()
        valid_items, rejected_items = validate_items(raw_items, ds)
        summary["items"] = _check_and_write(storage, "items", ds, raw_items, valid_items, rejected_items, settings)
        known_items = valid_items.select(ITEM_COL)
    if earlier:
        lake_items = (
            spark.read.option("basePath", storage.spark_path(Storage.lake("items")))
            .parquet(*[storage.spark_path(Storage.lake_partition("items", d)) for d in earlier])
            .select(ITEM_COL)
        )
        known_items = lake_items if known_items is None else known_items.unionByName(lake_items)

    raw_interactions = read_raw_drop(spark, storage, "interactions", ds)
    if raw_interactions is None:
        raise SchemaError(
            f"no interactions for {ds}: {storage.work.uri(Storage.raw('interactions', ds))} holds no "
            "CSV/Parquet/JSON file"
        )
    raw_interactions = raw_interactions.persist()
    valid, rejected = validate_interactions(
        raw_interactions, ds, known_items if settings.ingest.require_known_items else None
    )
    summary["interactions"] = _check_and_write(storage, "interactions", ds, raw_interactions, valid, rejected, settings)
    raw_interactions.unpersist()
    if raw_items is not None:
        raw_items.unpersist()

    raw_users = read_raw_drop(spark, storage, "users", ds)
    if raw_users is not None:
        raw_users = raw_users.persist()
        valid_users, rejected_users = validate_users(raw_users, ds)
        summary["users"] = _check_and_write(storage, "users", ds, raw_users, valid_users, rejected_users, settings)
        raw_users.unpersist()
    else:
        # A rerun of ds whose users file was withdrawn: drop any partition an earlier run left.
        storage.work.delete_prefix(Storage.lake_partition("users", ds) + "/")
    return summary


def _check_and_write(storage: Storage, entity: str, ds: str, raw, valid, rejected, settings: Settings) -> dict:
    quarantine_key = Storage.quarantine(entity, ds)
    rejected = rejected.persist()
    rejected.write.mode("overwrite").parquet(storage.spark_path(quarantine_key))
    summaries = summarize_rejects(raw, rejected)
    rejected.unpersist()
    for s in summaries:
        log.info("%s: %d rows, %d rejected %s", s.source_file, s.total, s.rejected, s.by_reason or "")
    enforce_reject_limit(summaries, settings.ingest.max_reject_fraction, entity, storage.work.uri(quarantine_key))
    lake_key = Storage.lake_partition(entity, ds)
    valid.write.mode("overwrite").parquet(storage.spark_path(lake_key))
    total = sum(s.total for s in summaries)
    rejected_n = sum(s.rejected for s in summaries)
    return {
        "rows": total,
        "valid": total - rejected_n,
        "rejected": rejected_n,
        "lake": storage.work.uri(lake_key),
        "quarantine": storage.work.uri(quarantine_key),
    }


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

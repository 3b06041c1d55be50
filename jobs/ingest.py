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

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str) -> dict[str, Any]:
    from recsys_lib import lake
    from recsys_lib.errors import SchemaError
    from recsys_lib.schema import ITEM_COL
    from recsys_lib.spark import get_spark
    from recsys_lib.storage import Storage
    from recsys_lib.validate import validate_interactions, validate_items, validate_users

    spark = get_spark(settings, "recsys-ingest")
    storage = Storage(settings)
    summary: dict[str, Any] = {"ds": ds}

    # Items first: interactions are checked against the catalogue known up to ds.
    raw_items = lake.read_raw_drop(spark, storage, "items", ds)
    has_earlier_items = bool(lake.lake_days(storage, "items", ds, before=True))
    if raw_items is None and not has_earlier_items:
        raise SchemaError(
            f"no item catalogue: {storage.work.uri(Storage.raw('items', ds))} holds no CSV/Parquet/JSON "
            "file and the lake has no earlier items partition"
        )
    known_items = []
    if raw_items is not None:
        raw_items = raw_items.persist()
        valid_items, rejected_items = validate_items(raw_items, ds)
        summary["items"] = _check_and_write(storage, "items", ds, raw_items, valid_items, rejected_items, settings)
        known_items.append(valid_items.select(ITEM_COL))
    if has_earlier_items:
        known_items.append(lake.read_lake(spark, storage, "items", ds, before=True).select(ITEM_COL))

    raw_interactions = lake.read_raw_drop(spark, storage, "interactions", ds)
    if raw_interactions is None:
        raise SchemaError(
            f"no interactions for {ds}: {storage.work.uri(Storage.raw('interactions', ds))} holds no "
            "CSV/Parquet/JSON file"
        )
    raw_interactions = raw_interactions.persist()
    catalogue = known_items[0] if len(known_items) == 1 else known_items[0].unionByName(known_items[1])
    valid, rejected = validate_interactions(
        raw_interactions, ds, catalogue if settings.ingest.require_known_items else None
    )
    summary["interactions"] = _check_and_write(storage, "interactions", ds, raw_interactions, valid, rejected, settings)
    raw_interactions.unpersist()
    if raw_items is not None:
        raw_items.unpersist()

    raw_users = lake.read_raw_drop(spark, storage, "users", ds)
    if raw_users is not None:
        raw_users = raw_users.persist()
        valid_users, rejected_users = validate_users(raw_users, ds)
        summary["users"] = _check_and_write(storage, "users", ds, raw_users, valid_users, rejected_users, settings)
        raw_users.unpersist()
    else:
        # A rerun of ds whose users file was withdrawn: drop any partition an earlier run left.
        storage.work.delete_prefix(Storage.lake_partition("users", ds) + "/")
    return summary


def _check_and_write(storage, entity: str, ds: str, raw, valid, rejected, settings: Settings) -> dict:
    """Quarantine the rejected rows, stop if a file is over the reject limit, write the lake."""
    from recsys_lib.lake import write_table
    from recsys_lib.storage import Storage
    from recsys_lib.validate import enforce_reject_limit, summarize_rejects

    rejected = rejected.persist()
    quarantine = write_table(rejected, storage, Storage.quarantine(entity, ds))
    summaries = summarize_rejects(raw, rejected)
    rejected.unpersist()
    for s in summaries:
        log.info("%s: %d rows, %d rejected %s", s.source_file, s.total, s.rejected, s.by_reason or "")
    enforce_reject_limit(summaries, settings.ingest.max_reject_fraction, entity, quarantine)
    total = sum(s.total for s in summaries)
    rejected_n = sum(s.rejected for s in summaries)
    return {
        "rows": total,
        "valid": total - rejected_n,
        "rejected": rejected_n,
        "lake": write_table(valid, storage, Storage.lake_partition(entity, ds)),
        "quarantine": quarantine,
    }


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

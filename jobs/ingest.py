"""Ingest + validate (Spark): raw drops for ds -> typed lake partitions + quarantine.

Reads every CSV / Parquet / JSON-lines file under ``raw/{items,interactions,users,queries}/ds=<ds>/``
(users and queries are optional: registered users, their segments and interests; a search log).
Rejected rows land in ``quarantine/<entity>/ds=<ds>`` with a reason. All or nothing per ds:
every entity of the drop is validated first, and a file whose rejected share is over
``ingest.max_reject_fraction`` stops the run before the lake is touched; then each entity's
partition is written to a staging key and the ds partitions are switched in together. Rerunning
a ds replaces its own partitions, so the stage is idempotent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class CheckedEntity:
    """One entity of the drop, validated and within its reject limit, not yet in the lake."""

    entity: str
    valid: Any  # Spark DataFrame of typed rows
    summary: dict[str, Any]


def run(settings: Settings, ds: str) -> dict[str, Any]:
    from recsys_lib import lake
    from recsys_lib.errors import SchemaError
    from recsys_lib.schema import ITEM_COL
    from recsys_lib.spark import get_spark
    from recsys_lib.storage import Storage
    from recsys_lib.validate import validate_interactions, validate_items, validate_queries, validate_users

    spark = get_spark(settings, "recsys-ingest")
    storage = Storage(settings)
    raw_items = lake.read_raw_drop(spark, storage, "items", ds, settings.ingest.encoding)
    has_earlier_items = bool(lake.lake_days(storage, "items", ds, before=True))
    if raw_items is None and not has_earlier_items:
        raise SchemaError(
            f"no item catalogue: {storage.work.uri(Storage.raw('items', ds))} holds no CSV/Parquet/JSON "
            "file and the lake has no earlier items partition"
        )
    raw_interactions = lake.read_raw_drop(spark, storage, "interactions", ds, settings.ingest.encoding)
    if raw_interactions is None:
        raise SchemaError(
            f"no interactions for {ds}: {storage.work.uri(Storage.raw('interactions', ds))} holds no "
            "CSV/Parquet/JSON file"
        )
    raw_users = lake.read_raw_drop(spark, storage, "users", ds, settings.ingest.encoding)
    raw_queries = lake.read_raw_drop(spark, storage, "queries", ds, settings.ingest.encoding)

    checked: list[CheckedEntity] = []
    persisted = []
    try:
        # Items first: interactions are checked against the catalogue known up to ds, and an
        # interaction whose item row was rejected in this drop is told why.
        known_items, rejected_items = [], None
        if raw_items is not None:
            persisted.append(raw_items.persist())
            valid_items, rejected_items = validate_items(raw_items, ds)
            checked.append(_check(storage, "items", ds, raw_items, valid_items.persist(), rejected_items, settings))
            persisted.append(checked[-1].valid)
            known_items.append(checked[-1].valid.select(ITEM_COL))
        if has_earlier_items:
            known_items.append(lake.read_lake(spark, storage, "items", ds, before=True).select(ITEM_COL))
        catalogue = known_items[0] if len(known_items) == 1 else known_items[0].unionByName(known_items[1])
        persisted.append(raw_interactions.persist())
        known = catalogue if settings.ingest.require_known_items else None
        valid, rejected = validate_interactions(
            raw_interactions, ds, known, rejected_items, settings.ingest.min_timestamp
        )
        checked.append(_check(storage, "interactions", ds, raw_interactions, valid, rejected, settings))
        if raw_users is not None:
            persisted.append(raw_users.persist())
            valid_users, rejected_users = validate_users(raw_users, ds)
            checked.append(_check(storage, "users", ds, raw_users, valid_users, rejected_users, settings))
        if raw_queries is not None:
            persisted.append(raw_queries.persist())
            valid_queries, rejected_queries = validate_queries(raw_queries, ds, known, settings.ingest.min_timestamp)
            checked.append(_check(storage, "queries", ds, raw_queries, valid_queries, rejected_queries, settings))
        return {"ds": ds, **_switch_in(storage, ds, checked)}
    finally:
        for df in persisted:
            df.unpersist()


def _check(storage, entity: str, ds: str, raw, valid, rejected, settings: Settings) -> CheckedEntity:
    """Quarantine the rejected rows and stop if a file is over the reject limit; nothing is
    written to the lake here."""
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
    by_reason: dict[str, int] = {}
    for s in summaries:
        for reason, n in s.by_reason.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    summary = {"rows": total, "valid": total - rejected_n, "rejected": rejected_n, "by_reason": by_reason,
               "quarantine": quarantine}  # fmt: skip
    return CheckedEntity(entity, valid, summary)


def _switch_in(storage, ds: str, checked: list[CheckedEntity]) -> dict[str, Any]:
    """Write every checked entity to its staging key, then switch the ds partitions in together
    (a users or queries partition an earlier run of ds left goes too when the drop has no such file)."""
    from recsys_lib.lake import write_table
    from recsys_lib.schema import OPTIONAL_ENTITIES
    from recsys_lib.storage import Storage

    out = {}
    for c in checked:
        write_table(c.valid, storage, Storage.lake_staging(c.entity, ds))
    for c in checked:
        storage.work.replace_prefix(Storage.lake_staging(c.entity, ds), Storage.lake_partition(c.entity, ds))
        out[c.entity] = {**c.summary, "lake": storage.work.uri(Storage.lake_partition(c.entity, ds))}
    for entity in set(OPTIONAL_ENTITIES) - {c.entity for c in checked}:
        storage.work.delete_prefix(Storage.lake_partition(entity, ds) + "/")
    return out


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

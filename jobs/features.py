"""Features (Spark): lake tables up to ds -> item documents, stats, user histories, the splits.

Writes under ``features/ds=<ds>/``:
  item_documents        item_id, title, categories, document, content_hash
  item_stats            item_id, n_interactions, n_users, last_ts (positives up to ds)
  user_histories        user_id, history, history_ts, seen, segment (everything up to ds: for
                        serving; registered users without interactions have empty lists)
  segment_popularity    segment, item_id, n_users, segment_users (the per-segment fallback)
  interactions_train    user_id, item_id, timestamp, weight, is_validation: positives before the
                        time-based holdout, cold items excluded; is_validation marks each user's
                        last training event (early stopping, baseline tuning)
  interactions_holdout  the time-based holdout (positives), cold items excluded
  train_user_histories  histories from the training side (for scoring the holdout)
  cold_items            item_id: the seeded share of items whose every interaction is held out
  interactions_cold     every positive interaction with a cold item (the cold-item evaluation)
"""

from __future__ import annotations

from typing import Any

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage


def read_lake(spark, storage: Storage, entity: str, ds: str):
    """Every lake partition of ``entity`` up to and including ds, with its ds column."""
    partitions = [d for d in storage.partitions(Storage.lake(entity)) if d <= ds]
    if not partitions:
        raise FileNotFoundError(
            f"no {entity} in the lake up to {ds} ({storage.work.uri(Storage.lake(entity))}): run ingest first"
        )
    return spark.read.option("basePath", storage.spark_path(Storage.lake(entity))).parquet(
        *[storage.spark_path(Storage.lake_partition(entity, d)) for d in partitions]
    )


def read_users(spark, storage: Storage, ds: str):
    """The latest row of every registered user up to ds (user_id, segment); none if no drop has
    had a users file (users are an optional input)."""
    from recsys_lib import features as fx

    if not [d for d in storage.partitions(Storage.lake("users")) if d <= ds]:
        return spark.createDataFrame([], f"{fx.USER_COL} string, {fx.SEGMENT_COL} string")
    return fx.latest_rows(read_lake(spark, storage, "users", ds), fx.USER_COL).select(fx.USER_COL, fx.SEGMENT_COL)


def run(settings: Settings, ds: str) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from recsys_lib import features as fx
    from recsys_lib.spark import get_spark

    spark = get_spark(settings, "recsys-features")
    storage = Storage(settings)
    cfg = settings.features

    items = fx.latest_rows(read_lake(spark, storage, "items", ds), fx.ITEM_COL)
    documents = fx.item_documents(items, cfg.max_tags_per_item)

    events = fx.dedupe_interactions(read_lake(spark, storage, "interactions", ds))
    events = events.withColumn(fx.TIMESTAMP_COL, fx.epoch_seconds()).persist()
    cold = fx.cold_items(events, cfg.cold_item_fraction, cfg.cold_item_seed).persist()
    warm_events = events.join(cold, fx.ITEM_COL, "left_anti")
    cold_events = events.join(cold, fx.ITEM_COL, "left_semi")
    split = fx.split_holdout(warm_events, cfg.split, cfg.holdout_fraction, cfg.min_user_interactions).persist()
    train_all = split.where(~F.col(fx.HOLDOUT_COL))
    train_pos = fx.positives(train_all, cfg.min_positive_rating)
    positives = fx.positives(events, cfg.min_positive_rating)
    users = read_users(spark, storage, ds)

    tables = {
        "item_documents": documents.orderBy(fx.ITEM_COL),
        "item_stats": fx.item_stats(positives),
        "user_histories": fx.with_registered_users(fx.user_histories(positives, events, cfg.max_history), users),
        "segment_popularity": fx.segment_popularity(positives, users),
        "interactions_train": fx.mark_validation(fx.training_interactions(train_pos), cfg.min_user_interactions),
        "interactions_holdout": fx.training_interactions(
            fx.positives(split.where(F.col(fx.HOLDOUT_COL)), cfg.min_positive_rating)
        ),
        "train_user_histories": fx.user_histories(train_pos, train_all, cfg.max_history),
        "cold_items": cold.orderBy(fx.ITEM_COL),
        "interactions_cold": fx.training_interactions(fx.positives(cold_events, cfg.min_positive_rating)),
    }
    summary: dict[str, Any] = {"ds": ds}
    for name, df in tables.items():
        key = Storage.features(name, ds)
        df.write.mode("overwrite").parquet(storage.spark_path(key))
        summary[name] = storage.work.uri(key)
    counts = split.groupBy(fx.HOLDOUT_COL).count().collect()
    summary["events"] = {("holdout" if r[fx.HOLDOUT_COL] else "train"): r["count"] for r in counts}
    summary["items"] = spark.read.parquet(storage.spark_path(Storage.features("item_documents", ds))).count()
    summary["events"]["cold"] = cold_events.count()
    summary["cold_items"] = cold.count()
    for df in (split, cold, events):
        df.unpersist()
    return summary


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

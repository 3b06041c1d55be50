"""Features (Spark): lake tables up to ds -> item documents, stats, user histories, the split.

Writes under ``features/ds=<ds>/``:
  item_documents        item_id, title, categories, document, content_hash
  item_stats            item_id, n_interactions, n_users, last_ts (positives up to ds)
  interactions_train    user_id, item_id, timestamp, weight (positives before the holdout)
  interactions_holdout  same columns, the time-based holdout
  user_histories        user_id, history, history_ts, seen (everything up to ds: for serving)
  train_user_histories  the same from the training side of the split (for evaluation)
"""

from __future__ import annotations

from typing import Any

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage

OUTPUTS = (
    "item_documents",
    "item_stats",
    "interactions_train",
    "interactions_holdout",
    "user_histories",
    "train_user_histories",
)


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


def run(settings: Settings, ds: str) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from recsys_lib import features as fx
    from recsys_lib.spark import get_spark

    spark = get_spark(settings, "recsys-features")
    storage = Storage(settings)
    cfg = settings.features

    items = fx.latest_items(read_lake(spark, storage, "items", ds))
    documents = fx.item_documents(items, cfg.max_tags_per_item)

    events = fx.dedupe_interactions(read_lake(spark, storage, "interactions", ds))
    events = events.withColumn(fx.TIMESTAMP_COL, fx.epoch_seconds()).persist()
    split = fx.split_holdout(events, cfg.split, cfg.holdout_fraction, cfg.min_user_interactions).persist()
    train_all = split.where(~F.col(fx.HOLDOUT_COL))
    holdout_all = split.where(F.col(fx.HOLDOUT_COL))
    positives = fx.positives(events, cfg.min_positive_rating)
    train_pos = fx.positives(train_all, cfg.min_positive_rating)

    tables = {
        "item_documents": documents.orderBy(fx.ITEM_COL),
        "item_stats": fx.item_stats(positives),
        "interactions_train": fx.training_interactions(train_pos),
        "interactions_holdout": fx.training_interactions(fx.positives(holdout_all, cfg.min_positive_rating)),
        "user_histories": fx.user_histories(positives, events, cfg.max_history),
        "train_user_histories": fx.user_histories(train_pos, train_all, cfg.max_history),
    }
    summary: dict[str, Any] = {"ds": ds}
    for name, df in tables.items():
        key = Storage.features(name, ds)
        df.write.mode("overwrite").parquet(storage.spark_path(key))
        summary[name] = storage.work.uri(key)
    counts = split.groupBy(fx.HOLDOUT_COL).count().collect()
    summary["events"] = {("holdout" if r[fx.HOLDOUT_COL] else "train"): r["count"] for r in counts}
    summary["items"] = spark.read.parquet(storage.spark_path(Storage.features("item_documents", ds))).count()
    split.unpersist()
    events.unpersist()
    return summary


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

"""Features (Spark): lake tables up to ds -> item documents, stats, user histories, the splits.

Writes under ``features/ds=<ds>/`` (``recsys_lib.storage.FeatureTable``):
  item_documents        item_id, title, categories, document, content_hash
  evaluation_documents  the same, with the search evaluation's held-out tags left out: what the
                        evaluation model reads
  search_pairs          query, item_id, is_holdout: lower-cased tags and categories -> the items
                        they describe (search's pseudo-queries; is_holdout: the held-out tags),
                        and the search log's clicks
  top_queries           query, n_searches: the search log's most frequent queries (features.top_queries)
  item_stats            item_id, n_interactions, n_users, last_ts (positives up to ds)
  user_histories        user_id, history, history_ts, seen, segment (everything up to ds: for
                        serving; registered users without interactions have empty lists)
  segment_popularity    segment, item_id, n_users, segment_users (the per-segment fallback)
  interactions_train    user_id, item_id, timestamp, weight, is_validation: positives before the
                        time-based holdout, cold items excluded; is_validation marks each user's
                        last training event (early stopping, baseline tuning)
  interactions_all      every positive up to ds (holdout and cold items included): what the
                        served model continues on after the evaluation model is measured
  interactions_holdout  the time-based holdout (positives), cold items excluded
  train_user_histories  histories from the training side (for scoring the holdout)
  cold_items            item_id: the seeded share of items whose every interaction is held out
  interactions_cold     every positive interaction with a cold item (the cold-item evaluation)
"""

from __future__ import annotations

from typing import Any

from recsys_lib.settings import Settings


def run(settings: Settings, ds: str) -> dict[str, Any]:
    from recsys_lib import features as fx
    from recsys_lib import lake
    from recsys_lib.errors import DataValidationError
    from recsys_lib.spark import get_spark
    from recsys_lib.storage import FeatureTable, Storage

    spark = get_spark(settings, "recsys-features")
    storage = Storage(settings)
    items = lake.read_lake(spark, storage, "items", ds)
    events = lake.read_lake(spark, storage, "interactions", ds)
    users = lake.read_registered_users(spark, storage, ds)
    search_log = lake.read_search_log(spark, storage, ds)

    split = fx.build_features(items, events, users, settings.features, search_log)
    counts = split.counts()
    if counts["train_positives"] < 2:
        split.release()
        raise DataValidationError(
            f"nothing to train on for {ds}: {counts['train_positives']} positive training events of "
            f"{counts['events'].get('train', 0)} from the lake's interactions up to {ds} "
            f"({storage.work.uri(Storage.lake('interactions'))}); a drop with only a header, or only "
            "events of weight 0 or rated below features.min_positive_rating, leaves nothing to learn"
        )
    cfg = settings.features
    if counts["train_users"] < cfg.min_training_users or counts["train_items"] < cfg.min_training_items:
        split.release()
        raise DataValidationError(
            f"too little to train on for {ds}: {counts['train_users']} users and {counts['train_items']} items have "
            f"positive training events, below features.min_training_users {cfg.min_training_users} or "
            f"features.min_training_items {cfg.min_training_items}; land more history (or lower the settings)"
        )
    summary: dict[str, Any] = {"ds": ds}
    for name, df in split.tables.items():
        summary[name] = lake.write_table(df, storage, Storage.features(name, ds))
    storage.write_split(ds, split.strategy)
    summary["items"] = spark.read.parquet(storage.spark_path(Storage.features(FeatureTable.ITEM_DOCUMENTS, ds))).count()
    summary |= counts
    split.release()
    return summary


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

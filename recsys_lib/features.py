"""Feature engineering (Spark): item documents, item stats, user histories, the holdout split,
the search pairs.

Pure DataFrame -> DataFrame transforms; ``build_features`` composes them into the features
stage's tables, and the features job reads the lake and writes them.
Tests: tests/unit/recsys_lib/test_features.py (Spark on hand-written rows).
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_lib.schema import (
    CATEGORIES_COL,
    CONTENT_HASH_COL,
    DESCRIPTION_COL,
    DOCUMENT_COL,
    DS_COL,
    EVENT_TYPE_COL,
    HISTORY_COL,
    HISTORY_TS_COL,
    HOLDOUT_COL,
    INTERESTS_COL,
    ITEM_COL,
    LAST_TS_COL,
    N_INTERACTIONS_COL,
    N_SEARCHES_COL,
    N_USERS_COL,
    QUERY_COL,
    RATING_COL,
    SEEN_COL,
    SEGMENT_COL,
    SEGMENT_USERS_COL,
    TAGS_COL,
    TIMESTAMP_COL,
    TITLE_COL,
    UPDATED_AT_COL,
    USER_COL,
    VALIDATION_COL,
    WEIGHT_COL,
)
from recsys_lib.settings import FeatureSettings, Split
from recsys_lib.storage import FeatureTable

HASH_BUCKETS = 10_000
SEARCH_LOG_SCHEMA = "query string, timestamp timestamp, user_id string, item_id string"
SPLITS = tuple(s for s in typing.get_args(Split) if s != "auto")  # what split_holdout runs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSet:
    """The features stage's tables for one ds (lazy Spark frames) and what they were cut from."""

    tables: dict[FeatureTable, DataFrame]
    strategy: Split  # the split that ran (``features.split``, "auto" resolved)
    split: DataFrame  # warm events with is_holdout (persisted)
    cold: DataFrame  # the cold items (persisted)
    cold_events: DataFrame
    events: DataFrame  # every event up to ds (persisted)
    train_positives: DataFrame  # the training side's positive events: what the model learns from

    def counts(self) -> dict:
        """Event counts per side of the split, the cold-item protocol's size, and how many
        positive training events, users and items the model has to learn from."""
        sides = self.split.groupBy(HOLDOUT_COL).count().collect()
        by_side = {("holdout" if r[HOLDOUT_COL] else "train"): r["count"] for r in sides}
        learn = self.train_positives.agg(
            F.count(F.lit(1)).alias("events"), F.countDistinct(USER_COL).alias("users"),
            F.countDistinct(ITEM_COL).alias("items"),
        ).first()  # fmt: skip
        learners = {"train_positives": learn["events"], "train_users": learn["users"], "train_items": learn["items"]}
        return {"split": self.strategy, "events": {**by_side, "cold": self.cold_events.count()},
                "cold_items": self.cold.count(), **learners}  # fmt: skip

    def release(self) -> None:
        for df in (self.split, self.cold, self.events):
            df.unpersist()


def build_features(
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame,
    cfg: FeatureSettings,
    search_log: DataFrame | None = None,
) -> FeatureSet:
    """Every feature table from the lake's items, interactions, registered users and search log up to ds.

    Args:
        items, interactions: lake rows of every drop up to ds (with their ds column).
        users: user_id, segment, interests of registered users (may be empty).
        search_log: query, timestamp, user_id, item_id rows (None or empty: no search log).
    """
    catalogue = latest_rows(items, ITEM_COL)
    documents = item_documents(catalogue, cfg.max_tags_per_item)
    pairs = search_pairs(catalogue, cfg.max_tags_per_item, cfg.search_holdout_fraction, cfg.search_holdout_seed)
    if search_log is None:
        search_log = items.sparkSession.createDataFrame([], SEARCH_LOG_SCHEMA)
    pairs = with_clicks(pairs, search_log, catalogue)
    held_out = pairs.where(F.col(HOLDOUT_COL)).select(F.col(QUERY_COL).alias("_tag")).distinct()
    events = dedupe_interactions(interactions).withColumn(TIMESTAMP_COL, epoch_seconds())
    events = weigh_events(events, cfg.event_weight_map()).persist()
    cold = cold_items(events, cfg.cold_item_fraction, cfg.cold_item_seed).persist()
    warm_events = events.join(cold, ITEM_COL, "left_anti")
    cold_events = events.join(cold, ITEM_COL, "left_semi")
    # The global time cut, computed once: "auto" counts the users on both sides of it.
    cutoff = time_cutoff(warm_events, cfg.holdout_fraction) if cfg.split in ("auto", "global_time") else None
    strategy = time_split(warm_events, cutoff, cfg.min_time_split_users) if cfg.split == "auto" else cfg.split
    split = split_holdout(
        warm_events, strategy, cfg.holdout_fraction, cfg.min_user_interactions, cfg.split_seed, cutoff
    ).persist()
    train_all = split.where(~F.col(HOLDOUT_COL))
    train_pos = positives(train_all, cfg.min_positive_rating)
    all_pos = positives(events, cfg.min_positive_rating)
    holdout_pos = positives(split.where(F.col(HOLDOUT_COL)), cfg.min_positive_rating)
    tables = {
        FeatureTable.ITEM_DOCUMENTS: documents.orderBy(ITEM_COL),
        FeatureTable.EVALUATION_DOCUMENTS: item_documents(
            without_tags(catalogue, held_out), cfg.max_tags_per_item
        ).orderBy(ITEM_COL),
        FeatureTable.SEARCH_PAIRS: pairs.orderBy(QUERY_COL, ITEM_COL),
        FeatureTable.TOP_QUERIES: top_queries(search_log, cfg.top_queries),
        FeatureTable.ITEM_STATS: item_stats(all_pos),
        FeatureTable.USER_HISTORIES: with_registered_users(user_histories(all_pos, events, cfg.max_history), users),
        FeatureTable.SEGMENT_POPULARITY: segment_popularity(all_pos, users),
        FeatureTable.INTERACTIONS_TRAIN: mark_validation(
            training_interactions(train_pos),
            cfg.min_user_interactions,
            cfg.split_seed if strategy == "random_item" else None,
        ),
        FeatureTable.INTERACTIONS_ALL: training_interactions(all_pos),
        FeatureTable.INTERACTIONS_HOLDOUT: training_interactions(holdout_pos),
        FeatureTable.TRAIN_USER_HISTORIES: user_histories(train_pos, train_all, cfg.max_history),
        FeatureTable.COLD_ITEMS: cold.orderBy(ITEM_COL),
        FeatureTable.INTERACTIONS_COLD: training_interactions(positives(cold_events, cfg.min_positive_rating)),
    }
    return FeatureSet(tables, strategy, split, cold, cold_events, events, train_pos)


def latest_rows(rows: DataFrame, key: str) -> DataFrame:
    """One row per ``key`` (items, users): the latest version by (updated_at, ds) across drops."""
    w = Window.partitionBy(key).orderBy(F.col(UPDATED_AT_COL).desc_nulls_last(), F.col(DS_COL).desc())
    return rows.withColumn("_n", F.row_number().over(w)).where("_n = 1").drop("_n", DS_COL)


def item_documents(items: DataFrame, max_tags: int = 10) -> DataFrame:
    """The text the item tower reads, and its hash (embeddings are reused while it is unchanged).

    Document: ``"<title>. <categories>. Tags: <tags>. <description>"`` with empty parts left out.
    """
    categories = F.array_join(F.col(CATEGORIES_COL), ", ")
    tags = F.array_join(F.slice(F.col(TAGS_COL), 1, max_tags), ", ")
    parts = [
        F.col(TITLE_COL),
        F.when(F.size(CATEGORIES_COL) > 0, categories),
        F.when(F.size(TAGS_COL) > 0, F.concat(F.lit("Tags: "), tags)),
        F.col(DESCRIPTION_COL),
    ]
    document = F.concat_ws(". ", *[F.when(F.trim(p) != "", F.trim(p)) for p in parts])
    return items.select(
        ITEM_COL,
        TITLE_COL,
        CATEGORIES_COL,
        document.alias(DOCUMENT_COL),
        F.sha2(document, 256).alias(CONTENT_HASH_COL),
    )


def search_pairs(items: DataFrame, max_tags: int, holdout_fraction: float, seed: int) -> DataFrame:
    """(query, item_id, is_holdout): each item's tags and categories as the queries that should
    find it (the pseudo-queries search is trained on when there is no search log).

    A seeded share of the distinct tags (by a hash of the lower-cased tag, so a tag stays held
    out from night to night) is held out whole: those tags are left out of the evaluation
    model's documents and of its training pairs, and the search evaluation asks for them.
    Categories are never held out: they are the catalogue's own vocabulary.
    """
    tag = F.explode(F.slice(F.col(TAGS_COL), 1, max_tags))
    tags = items.select(ITEM_COL, tag.alias(QUERY_COL))
    categories = items.select(ITEM_COL, F.explode(CATEGORIES_COL).alias(QUERY_COL))
    normal = normal_query()
    bucket = F.pmod(F.xxhash64(F.lit(seed), normal), F.lit(HASH_BUCKETS))
    held = bucket < F.lit(int(round(holdout_fraction * HASH_BUCKETS)))
    pairs = tags.withColumn(HOLDOUT_COL, held).unionByName(categories.withColumn(HOLDOUT_COL, F.lit(False)))
    pairs = pairs.withColumn(QUERY_COL, normal).where(F.col(QUERY_COL) != "")
    # A tag that is also a category name stays a training pair.
    pairs = pairs.groupBy(QUERY_COL, ITEM_COL).agg(F.min(HOLDOUT_COL).alias(HOLDOUT_COL))
    return pairs.select(QUERY_COL, ITEM_COL, HOLDOUT_COL)


def normal_query(col: str = QUERY_COL) -> Column:
    """A query as search pairs and the frequent-query table key it: trimmed, lower-cased, inner
    runs of white space made one space."""
    return F.regexp_replace(F.lower(F.trim(F.col(col))), r"\s+", " ")


def with_clicks(pairs: DataFrame, search_log: DataFrame, items: DataFrame) -> DataFrame:
    """``search_pairs`` plus the search log's clicks (normalised query -> clicked catalogue item):
    what real users found for their words, never held out (the held-out tags are the evaluation)."""
    clicks = search_log.where(F.col(ITEM_COL).isNotNull()).join(items.select(ITEM_COL), ITEM_COL, "left_semi")
    clicks = clicks.select(normal_query().alias(QUERY_COL), ITEM_COL, F.lit(False).alias(HOLDOUT_COL))
    both = pairs.unionByName(clicks.where(F.col(QUERY_COL) != ""))
    return both.groupBy(QUERY_COL, ITEM_COL).agg(F.min(HOLDOUT_COL).alias(HOLDOUT_COL))


def top_queries(search_log: DataFrame, n: int) -> DataFrame:
    """(query, n_searches) of the ``n`` most frequent normalised queries (ties by query text)."""
    counted = search_log.select(normal_query().alias(QUERY_COL)).where(F.col(QUERY_COL) != "")
    counted = counted.groupBy(QUERY_COL).agg(F.count(F.lit(1)).alias(N_SEARCHES_COL))
    return counted.orderBy(F.col(N_SEARCHES_COL).desc(), F.col(QUERY_COL)).limit(n)


def without_tags(items: DataFrame, tags: DataFrame) -> DataFrame:
    """``items`` with every tag in ``tags`` (column ``_tag``, lower-cased) removed from their tag lists."""
    held = tags.agg(F.collect_set("_tag").alias("_held"))
    kept = F.filter(TAGS_COL, lambda t: ~F.array_contains(F.col("_held"), F.lower(F.trim(t))))
    return items.crossJoin(held).withColumn(TAGS_COL, kept).drop("_held")


def dedupe_interactions(interactions: DataFrame) -> DataFrame:
    """Drop events repeated across drops (a re-sent file must not count twice)."""
    return interactions.dropDuplicates([USER_COL, ITEM_COL, TIMESTAMP_COL, EVENT_TYPE_COL])


def epoch_seconds(col: str = TIMESTAMP_COL) -> Column:
    return F.unix_timestamp(F.col(col)).alias(col)


def weigh_events(interactions: DataFrame, event_weights: dict[str, float]) -> DataFrame:
    """Multiply each event's ``weight`` by its event type's weight (unlisted types: 1)."""
    if not event_weights:
        return interactions
    by_type = F.create_map(*[F.lit(x) for pair in event_weights.items() for x in pair])
    factor = F.coalesce(by_type[F.col(EVENT_TYPE_COL)], F.lit(1.0))
    return interactions.withColumn(WEIGHT_COL, F.col(WEIGHT_COL) * factor)


def positives(interactions: DataFrame, min_rating: float | None) -> DataFrame:
    """Interactions that count as positive feedback: weight above 0 and, with ``min_rating``,
    rated at least that (unrated events always do)."""
    liked = F.col(WEIGHT_COL) > 0
    if min_rating is not None:
        liked &= F.col(RATING_COL).isNull() | (F.col(RATING_COL) >= min_rating)
    return interactions.where(liked)


def time_cutoff(interactions: DataFrame, holdout_fraction: float) -> float | None:
    """The global time split's cut: the ``1 - holdout_fraction`` quantile of the timestamps
    (None without events)."""
    cut = interactions.approxQuantile(TIMESTAMP_COL, [1 - holdout_fraction], 0.0)
    return cut[0] if cut else None


def time_split(interactions: DataFrame, cutoff: float | None, min_users: int) -> Split:
    """The "auto" split: "global_time" when at least ``min_users`` users have events on both
    sides of its ``cutoff`` (the users it can score), else "user_chrono"."""
    if cutoff is None:  # no events: the features stage says so next
        return "user_chrono"
    spans = interactions.groupBy(USER_COL).agg(F.min(TIMESTAMP_COL).alias("first"), F.max(TIMESTAMP_COL).alias("last"))
    returning = spans.where((F.col("first") <= F.lit(cutoff)) & (F.col("last") > F.lit(cutoff))).count()
    chosen = "global_time" if returning >= min_users else "user_chrono"
    log.info("features.split auto: %s (%d users have events on both sides of the global time cut; "
             "features.min_time_split_users %d)", chosen, returning, min_users)  # fmt: skip
    return chosen


def split_holdout(
    interactions: DataFrame, strategy: Split, holdout_fraction: float, min_user_interactions: int, seed: int = 42,
    cutoff: float | None = None,
) -> DataFrame:
    """Mark the holdout with a boolean ``is_holdout`` column.

    Args:
        interactions: user_id, item_id, timestamp (epoch seconds) rows.
        strategy: "user_chrono" holds out each user's latest ``floor(n * fraction)`` events
            (at least one) when the user has ``min_user_interactions`` or more; "global_time"
            holds out every event after the ``1 - fraction`` quantile of time; "random_item"
            holds out a seeded random ``fraction`` of each item's events (the last
            ``n - round(n * (1 - fraction))`` in a hash order), the stratified random split of
            the Microsoft Recommenders benchmarks: for comparisons, not for gating nights (an
            event near an item's cut can change sides as the item gains events).
        cutoff: global_time's cut (``time_cutoff``) when the caller has it already.
    """
    if strategy not in SPLITS:
        raise ValueError(f"features.split must be one of {SPLITS}, got {strategy!r}")
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"features.holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if strategy == "global_time":
        cutoff = time_cutoff(interactions, holdout_fraction) if cutoff is None else cutoff
        held = F.lit(False) if cutoff is None else F.col(TIMESTAMP_COL) > F.lit(cutoff)
        return interactions.withColumn(HOLDOUT_COL, held)
    if strategy == "random_item":
        by_item = Window.partitionBy(ITEM_COL)
        shuffled = by_item.orderBy(F.xxhash64(F.lit(seed), USER_COL, ITEM_COL, TIMESTAMP_COL))
        n_train = F.round(F.count(F.lit(1)).over(by_item) * F.lit(1 - holdout_fraction))
        return interactions.withColumn(HOLDOUT_COL, F.row_number().over(shuffled) > n_train)
    by_user = Window.partitionBy(USER_COL)
    newest_first = by_user.orderBy(F.col(TIMESTAMP_COL).desc(), F.col(ITEM_COL).desc())
    n = F.count(F.lit(1)).over(by_user)
    n_holdout = F.greatest(F.lit(1), F.floor(n * F.lit(holdout_fraction)))
    return interactions.withColumn(
        HOLDOUT_COL, (n >= min_user_interactions) & (F.row_number().over(newest_first) <= n_holdout)
    )


def cold_items(item_ids: DataFrame, fraction: float, seed: int) -> DataFrame:
    """A stable, seeded share of items for the cold-item evaluation: every interaction with them
    is held out, so the model knows them by their text alone.

    Chosen by a hash of the item id, so the choice does not depend on partitioning or on the
    other items, and an item stays cold (or warm) from one night to the next.
    """
    bucket = F.pmod(F.xxhash64(F.lit(seed), F.col(ITEM_COL)), F.lit(HASH_BUCKETS))
    return item_ids.select(ITEM_COL).distinct().where(bucket < F.lit(int(round(fraction * HASH_BUCKETS))))


def mark_validation(interactions: DataFrame, min_user_interactions: int, random_seed: int | None = None) -> DataFrame:
    """Flag each user's latest training event (users with at least ``min_user_interactions``)
    as ``is_validation``: the events early stopping, baseline tuning and the ranker's check are
    scored on. With ``random_seed`` (the random_item split), a seeded random event instead, so
    that validation asks what the holdout asks."""
    by_user = Window.partitionBy(USER_COL)
    if random_seed is None:
        newest_first = by_user.orderBy(F.col(TIMESTAMP_COL).desc(), F.col(ITEM_COL).desc())
    else:
        newest_first = by_user.orderBy(F.xxhash64(F.lit(random_seed), USER_COL, ITEM_COL, TIMESTAMP_COL))
    n = F.count(F.lit(1)).over(by_user)
    return interactions.withColumn(
        VALIDATION_COL, (n >= min_user_interactions) & (F.row_number().over(newest_first) == 1)
    )


def user_histories(positives: DataFrame, seen_from: DataFrame, max_history: int) -> DataFrame:
    """Per user: the latest ``max_history`` positive items oldest-first, their times, and every
    item the user has seen (positive or not, sorted).

    An item interacted with more than once appears once, at its latest time. Users whose events
    are all non-positive get an empty history (they are served the popularity fallback).
    """
    latest = positives.groupBy(USER_COL, ITEM_COL).agg(F.max(TIMESTAMP_COL).alias(TIMESTAMP_COL))
    events = F.array_sort(F.collect_list(F.struct(F.col(TIMESTAMP_COL), F.col(ITEM_COL))))
    start = F.greatest(F.lit(1), F.size("_events") - F.lit(max_history - 1))
    recent = F.slice(F.col("_events"), start, F.lit(max_history))
    history = (
        latest.groupBy(USER_COL)
        .agg(events.alias("_events"))
        .select(
            USER_COL,
            F.transform(recent, lambda e: e[ITEM_COL]).alias(HISTORY_COL),
            F.transform(recent, lambda e: e[TIMESTAMP_COL]).alias(HISTORY_TS_COL),
        )
    )
    seen = seen_from.groupBy(USER_COL).agg(F.array_sort(F.collect_set(ITEM_COL)).alias(SEEN_COL))
    return seen.join(history, USER_COL, "left").select(
        USER_COL,
        F.coalesce(HISTORY_COL, F.array().cast("array<string>")).alias(HISTORY_COL),
        F.coalesce(HISTORY_TS_COL, F.array().cast("array<bigint>")).alias(HISTORY_TS_COL),
        SEEN_COL,
    )


def with_registered_users(histories: DataFrame, users: DataFrame) -> DataFrame:
    """Add each user's segment and interests (null if unknown) to ``user_histories`` rows, and a
    row with an empty history for every registered user without interactions: they are active
    users too, served from their interests or the (segment's) popularity fallback."""
    empty = F.array().cast("array<string>")
    return histories.join(users.select(USER_COL, SEGMENT_COL, INTERESTS_COL), USER_COL, "full").select(
        USER_COL,
        F.coalesce(HISTORY_COL, empty).alias(HISTORY_COL),
        F.coalesce(HISTORY_TS_COL, F.array().cast("array<bigint>")).alias(HISTORY_TS_COL),
        F.coalesce(SEEN_COL, empty).alias(SEEN_COL),
        SEGMENT_COL,
        INTERESTS_COL,
    )


def segment_popularity(positives: DataFrame, users: DataFrame) -> DataFrame:
    """Per (segment, item): distinct users of the segment who interacted with the item, and the
    segment's number of users with any interaction (``segment_users``)."""
    members = users.where(F.col(SEGMENT_COL).isNotNull()).select(USER_COL, SEGMENT_COL)
    events = positives.select(USER_COL, ITEM_COL).join(members, USER_COL)
    sizes = events.groupBy(SEGMENT_COL).agg(F.countDistinct(USER_COL).alias(SEGMENT_USERS_COL))
    counts = events.groupBy(SEGMENT_COL, ITEM_COL).agg(F.countDistinct(USER_COL).alias(N_USERS_COL))
    return counts.join(sizes, SEGMENT_COL).orderBy(SEGMENT_COL, ITEM_COL)


def item_stats(interactions: DataFrame) -> DataFrame:
    """Per item: interaction count, distinct users, last event time. Popularity = n_users."""
    return interactions.groupBy(ITEM_COL).agg(
        F.count(F.lit(1)).alias(N_INTERACTIONS_COL),
        F.countDistinct(USER_COL).alias(N_USERS_COL),
        F.max(TIMESTAMP_COL).alias(LAST_TS_COL),
    )


def training_interactions(interactions: DataFrame) -> DataFrame:
    return interactions.select(USER_COL, ITEM_COL, TIMESTAMP_COL, WEIGHT_COL)

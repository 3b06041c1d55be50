"""Feature transforms (Spark) on hand-written rows, and the features stage's table set."""

import dataclasses
import datetime as dt
import hashlib

import pytest
from pyspark.sql import functions as F

from recsys_lib import features as fx
from recsys_lib.schema import HOLDOUT_COL
from recsys_lib.storage import FeatureTable

pytestmark = pytest.mark.spark


def test_latest_item_rows_and_documents(spark):
    items = spark.createDataFrame(
        [
            ("i1", "Old", None, [], [], None, "2026-01-01"),
            ("i1", "Heat (1995)", None, ["Crime", "Thriller"], ["heist", "la", "pacino"], None, "2026-01-02"),
            ("i2", "Up", "A house flies.", [], [], None, "2026-01-01"),
        ],
        "item_id string, title string, description string, categories array<string>, tags array<string>, "
        "updated_at timestamp, ds string",
    )
    docs = {r.item_id: r for r in fx.item_documents(fx.latest_rows(items, "item_id"), max_tags=2).collect()}
    assert docs["i1"].document == "Heat (1995). Crime, Thriller. Tags: heist, la"
    assert docs["i2"].document == "Up. A house flies."
    assert docs["i1"].content_hash == hashlib.sha256(b"Heat (1995). Crime, Thriller. Tags: heist, la").hexdigest()


def test_search_pairs_hold_out_whole_tags_and_never_categories(spark):
    items = spark.createDataFrame(
        [
            ("i1", "Heat", ["Crime"], ["Heist", "pacino", "crime"]),
            ("i2", "Ronin", ["Crime", "Action"], ["heist", "car chase"]),
        ],
        "item_id string, title string, categories array<string>, tags array<string>",
    )
    everything = {(r.query, r.item_id, r.is_holdout) for r in fx.search_pairs(items, 10, 1.0, 23).collect()}
    # Tags are lower-cased; a tag that is also a category stays a training pair.
    assert everything == {("heist", "i1", True), ("heist", "i2", True), ("pacino", "i1", True),
                          ("car chase", "i2", True), ("crime", "i1", False), ("crime", "i2", False),
                          ("action", "i2", False)}  # fmt: skip
    assert not any(r.is_holdout for r in fx.search_pairs(items, 10, 0.0, 23).collect())
    some = {(r.query, r.is_holdout) for r in fx.search_pairs(items, 1, 0.5, 23).collect()}
    assert {q for q, _ in some} == {"heist", "crime", "action"}  # max_tags: the first tag of each item
    # One decision per tag, whichever item carries it.
    assert len({held for q, held in some if q == "heist"}) == 1

    held = spark.createDataFrame([("heist",)], "_tag string")
    kept = {r.item_id: r.tags for r in fx.without_tags(items, held).collect()}
    assert kept == {"i1": ["pacino", "crime"], "i2": ["car chase"]}


def events(spark, rows, weights=None):
    weights = weights or [1.0] * len(rows)
    rows = [(*r, w) for r, w in zip(rows, weights)]
    return spark.createDataFrame(rows, "user_id string, item_id string, timestamp long, rating double, weight double")


def test_user_chrono_split_holds_out_each_users_latest_events(spark):
    rows = [("u1", f"i{t}", t, None) for t in range(10)] + [("u2", "a", 1, None), ("u2", "b", 2, None)]
    split = fx.split_holdout(events(spark, rows), "user_chrono", 0.2, min_user_interactions=3)
    held = sorted((r.user_id, r.item_id) for r in split.where(F.col(HOLDOUT_COL)).collect())
    # u1: floor(10 * 0.2) = 2 latest events; u2 has fewer than 3 events and keeps all in train.
    assert held == [("u1", "i8"), ("u1", "i9")]


def test_global_time_split(spark):
    rows = [("u1", f"i{t}", t, None) for t in range(10)]
    split = fx.split_holdout(events(spark, rows), "global_time", 0.3, 3)
    assert sorted(r.timestamp for r in split.where(F.col(HOLDOUT_COL)).collect()) == [7, 8, 9]
    with pytest.raises(ValueError, match="features.split"):
        fx.split_holdout(events(spark, rows), "random", 0.3, 3)


def test_the_auto_split_is_global_time_only_where_enough_users_return_after_its_cut(spark):
    # Three users with events on both sides of the 70% time quantile (t=3), two who left before it.
    rows = [(u, f"i{t}", t, None) for u in ("u1", "u2", "u3") for t in (1, 9)]
    rows += [(u, f"i{t}", t, None) for u in ("u4", "u5") for t in (1, 2, 3)]
    cutoff = fx.time_cutoff(events(spark, rows), 0.3)
    assert cutoff == 3
    assert fx.time_split(events(spark, rows), cutoff, min_users=3) == "global_time"
    assert fx.time_split(events(spark, rows), cutoff, min_users=4) == "user_chrono"


def test_event_weights_scale_events_and_weight_zero_is_seen_not_liked(spark):
    rows = [("u1", "a", 1, None, "view"), ("u1", "b", 2, None, "purchase"), ("u1", "c", 3, None, "impression"),
            ("u1", "d", 4, None, "click")]  # fmt: skip
    frame = spark.createDataFrame(
        [(*r, 2.0) for r in rows], "user_id string, item_id string, timestamp long, rating double, event_type string, "
        "weight double",
    )  # fmt: skip
    weighed = fx.weigh_events(frame, {"view": 0.25, "purchase": 3.0, "impression": 0.0})
    assert {r.item_id: r.weight for r in weighed.collect()} == {"a": 0.5, "b": 6.0, "c": 0.0, "d": 2.0}
    assert sorted(r.item_id for r in fx.positives(weighed, None).collect()) == ["a", "b", "d"]


def test_random_item_split_is_stratified_by_item_and_seeded(spark):
    rows = [(f"u{u}", item, u, None) for item, n in (("a", 8), ("b", 4), ("c", 1)) for u in range(n)]
    split = fx.split_holdout(events(spark, rows), "random_item", 0.25, 3, seed=42)
    held = split.where(F.col(HOLDOUT_COL)).collect()
    # round(n * 0.75) of each item's events stay in train: a keeps 6 of 8, b 3 of 4, c its one.
    assert sorted(r.item_id for r in held) == ["a", "a", "b"]
    again = fx.split_holdout(events(spark, rows), "random_item", 0.25, 3, seed=42).where(F.col(HOLDOUT_COL))
    assert sorted(r.user_id for r in again.collect()) == sorted(r.user_id for r in held)
    other = fx.split_holdout(events(spark, rows), "random_item", 0.25, 3, seed=7).where(F.col(HOLDOUT_COL))
    assert sorted(r.user_id for r in other.collect()) != sorted(r.user_id for r in held)


def test_user_histories_order_truncate_and_seen(spark):
    rows = [
        ("u1", "a", 1, 5.0),
        ("u1", "b", 3, 1.0),
        ("u1", "c", 2, 4.0),
        ("u1", "a", 4, 5.0),
        ("u1", "d", 5, 4.0),
        ("u2", "z", 1, 1.0),
    ]
    all_events = events(spark, rows)
    positives = fx.positives(all_events, min_rating=3.0)
    got = {r.user_id: r for r in fx.user_histories(positives, all_events, max_history=2).collect()}
    # u1 positives by latest time: c(2) a(4) d(5); keep the latest two. b (rating 1) is seen only.
    assert got["u1"].history == ["a", "d"] and got["u1"].history_ts == [4, 5]
    assert got["u1"].seen == ["a", "b", "c", "d"]
    # u2 has no positive event: empty history (the popularity fallback), but z is still seen.
    assert got["u2"].history == [] and got["u2"].seen == ["z"]


def test_registered_users_and_segment_popularity(spark):
    rows = [("u1", "a", 1, None), ("u1", "b", 2, None), ("u2", "a", 3, None), ("u3", "c", 4, None)]
    all_events = events(spark, rows)
    users = spark.createDataFrame(
        [("u1", "kids", None), ("u2", "kids", None), ("u4", "kids", None), ("u5", None, "space operas")],
        "user_id string, segment string, interests string",
    )
    histories = fx.with_registered_users(fx.user_histories(all_events, all_events, 10), users)
    got = {r.user_id: (r.history, r.seen, r.segment, r.interests) for r in histories.collect()}
    assert got == {
        "u1": (["a", "b"], ["a", "b"], "kids", None),
        "u2": (["a"], ["a"], "kids", None),
        "u3": (["c"], ["c"], None, None),  # interacted, not registered: served, no segment
        "u4": ([], [], "kids", None),  # registered, no interactions yet: served the fallback
        "u5": ([], [], None, "space operas"),  # ... or from what they said they like
    }
    popularity = {
        (r.segment, r.item_id): (r.n_users, r.segment_users) for r in fx.segment_popularity(all_events, users).collect()
    }
    # u3 has no segment and u4 no interaction: neither counts.
    assert popularity == {("kids", "a"): (2, 2), ("kids", "b"): (1, 2)}


def test_item_stats_and_dedupe(spark):
    rows = [("u1", "a", 1, None), ("u2", "a", 2, None), ("u2", "a", 3, None), ("u1", "b", 4, None)]
    df = events(spark, rows).withColumn("event_type", F.lit("view"))
    stats = {r.item_id: (r.n_interactions, r.n_users, r.last_ts) for r in fx.item_stats(df).collect()}
    assert stats == {"a": (3, 2, 3), "b": (1, 1, 4)}
    assert fx.dedupe_interactions(df.unionByName(df)).count() == 4


def test_cold_items_are_a_stable_seeded_share(spark):
    rows = [("u1", f"i{n}", n, None) for n in range(2000)]
    chosen = {r.item_id for r in fx.cold_items(events(spark, rows), 0.1, seed=17).collect()}
    assert 150 < len(chosen) < 250  # about 10% of 2000
    # The choice depends on the item id only: a subset of the catalogue picks the same items.
    subset = {r.item_id for r in fx.cold_items(events(spark, rows[:500]), 0.1, seed=17).collect()}
    assert subset == {i for i in chosen if int(i[1:]) < 500}
    other_seed = {r.item_id for r in fx.cold_items(events(spark, rows), 0.1, seed=18).collect()}
    assert other_seed != chosen
    assert fx.cold_items(events(spark, rows), 0.0, seed=17).count() == 0


def test_mark_validation_flags_each_users_latest_event(spark):
    rows = [("u1", "a", 1, None), ("u1", "b", 3, None), ("u1", "c", 2, None), ("u2", "a", 1, None)]
    marked = fx.mark_validation(events(spark, rows), min_user_interactions=2)
    flagged = sorted((r.user_id, r.item_id) for r in marked.where(F.col("is_validation")).collect())
    assert flagged == [("u1", "b")]  # u2 has too few events to give one up


def test_on_a_random_split_validation_is_a_seeded_random_event(spark):
    rows = [(f"u{u}", f"i{i}", i, None) for u in range(20) for i in range(5)]
    marked = fx.mark_validation(events(spark, rows), min_user_interactions=2, random_seed=3)
    flagged = {r.user_id: r.timestamp for r in marked.where(F.col("is_validation")).collect()}
    assert len(flagged) == 20 and len(set(flagged.values())) > 1  # one per user, not always the latest
    again = fx.mark_validation(events(spark, rows), min_user_interactions=2, random_seed=3)
    assert {r.user_id: r.timestamp for r in again.where(F.col("is_validation")).collect()} == flagged


def test_build_features_makes_every_table_of_the_stage(spark, settings):
    items = spark.createDataFrame(
        [(f"i{n}", f"Item {n}", None, ["Drama"], [], None, "2026-01-01") for n in range(6)],
        "item_id string, title string, description string, categories array<string>, tags array<string>, "
        "updated_at timestamp, ds string",
    )
    day = dt.datetime(2026, 1, 1)
    events = spark.createDataFrame(
        [(u, f"i{(n + k) % 6}", day + dt.timedelta(hours=k), "rating", 4.0, 1.0, "2026-01-01")
         for n, u in enumerate(["u1", "u2"]) for k in range(5)],
        "user_id string, item_id string, timestamp timestamp, event_type string, rating double, weight double, "
        "ds string",
    )  # fmt: skip
    users = spark.createDataFrame(
        [("u1", "a", None), ("u3", "b", "jazz")], "user_id string, segment string, interests string"
    )
    cfg = dataclasses.replace(settings.features, cold_item_fraction=0.0, holdout_fraction=0.2)
    features = fx.build_features(items, events, users, cfg)
    assert set(features.tables) == set(FeatureTable)
    assert features.counts() == {
        "split": "user_chrono",  # auto: 2 users return after the global cut, below min_time_split_users
        "events": {"train": 8, "holdout": 2, "cold": 0},
        "cold_items": 0,
        "train_positives": 8,
        "train_users": 2,
        "train_items": 5,
    }
    train = features.tables[FeatureTable.INTERACTIONS_TRAIN].collect()
    assert sorted((r.user_id, r.item_id) for r in train if r.is_validation) == [("u1", "i3"), ("u2", "i4")]
    histories = {r.user_id: r for r in features.tables[FeatureTable.USER_HISTORIES].collect()}
    assert histories["u3"].history == [] and histories["u3"].segment == "b"  # registered, no events yet
    assert histories["u1"].history == ["i0", "i1", "i2", "i3", "i4"] and histories["u1"].segment == "a"
    features.release()


def test_search_log_clicks_become_pairs_and_frequent_queries_are_counted(spark):
    items = spark.createDataFrame([("i1",), ("i2",)], "item_id string")
    pairs = spark.createDataFrame([("heist", "i1", True)], "query string, item_id string, is_holdout boolean")
    log = spark.createDataFrame(
        [("Heist  Movies", "u1", "i2"), ("heist movies", "u2", None), ("heist", "u3", "i1"), ("space", None, "gone"),
         ("  ", "u4", "i1")],
        "query string, user_id string, item_id string",
    )  # fmt: skip
    got = {(r.query, r.item_id, r.is_holdout) for r in fx.with_clicks(pairs, log, items).collect()}
    # Queries are normalised; a click on an item outside the catalogue and a blank query add
    # nothing; a click on a held-out tag's item makes a training pair of it.
    assert got == {("heist movies", "i2", False), ("heist", "i1", False)}
    top = [(r.query, r.n_searches) for r in fx.top_queries(log, 2).collect()]
    assert top == [("heist movies", 2), ("heist", 1)]

import pytest

from recsys_lib.errors import DataValidationError, SchemaError
from recsys_lib.validate import (
    RejectSummary,
    as_strings,
    check_columns,
    enforce_reject_limit,
    summarize_rejects,
    validate_interactions,
    validate_items,
    validate_queries,
    validate_users,
)

pytestmark = pytest.mark.spark
DS = "2026-01-02"


def strings(spark, rows, columns, entity, source="drop.csv"):
    return as_strings(spark.createDataFrame(rows, columns), entity, source)


def test_missing_required_column_names_file_and_column():
    with pytest.raises(
        SchemaError, match=r"raw/x.csv: missing required interactions column\(s\) timestamp \(found: user_id, item_id\)"
    ):
        check_columns(["user_id", "item_id"], "interactions", "raw/x.csv")


def test_a_misspelt_column_is_named(spark, caplog):
    with pytest.raises(SchemaError, match=r"column\(s\) timestamp .*misspelt: timestmp\?"):
        check_columns(["user_id", "item_id", "timestmp"], "interactions", "raw/x.csv")
    with caplog.at_level("WARNING", logger="recsys_lib.validate"):
        strings(spark, [("i1", "T", "A")], ["item_id", "title", "catgories"], "items")
    assert "column(s) not in the items contract, ignored: catgories (did you mean categories?)" in caplog.text


def test_interaction_rules(spark):
    rows = [
        ("u1", "i1", "1767225600", "click", None),  # valid, epoch seconds (2026-01-01)
        ("u1", "i2", "2026-01-02T10:00:00Z", None, "4.5"),  # valid, ISO-8601, default event type
        ("u2", "i1", "1767225600000", None, None),  # valid, epoch milliseconds
        ("u2", "i2", "1767229200000000", None, None),  # valid, epoch microseconds (01:00)
        ("u4", "i2", "1767232800000000000", None, None),  # valid, epoch nanoseconds (02:00)
        (None, "i1", "1767225600", None, None),
        ("u3", " ", "1767225600", None, None),
        ("u3", "i1", "yesterday", None, None),
        ("u3", "i1", "2026-01-03T00:00:00Z", None, None),  # after the logical date
        ("u3", "i1", "1767225600", None, "great"),
        ("u3", "i9", "1767225600", None, None),  # not in the catalogue
        ("u1", "i1", "1767225600", "click", None),  # exact repeat of the first row
    ]
    raw = strings(spark, rows, ["user_id", "item_id", "timestamp", "event_type", "rating"], "interactions")
    known = spark.createDataFrame([("i1",), ("i2",)], ["item_id"])
    valid, rejected = validate_interactions(raw, DS, known)
    got = sorted(
        (r.user_id, r.item_id, r.timestamp.isoformat(), r.event_type, r.rating, r.weight) for r in valid.collect()
    )
    assert got == [
        ("u1", "i1", "2026-01-01T00:00:00", "click", None, 1.0),
        ("u1", "i2", "2026-01-02T10:00:00", "interaction", 4.5, 1.0),
        ("u2", "i1", "2026-01-01T00:00:00", "interaction", None, 1.0),
        ("u2", "i2", "2026-01-01T01:00:00", "interaction", None, 1.0),
        ("u4", "i2", "2026-01-01T02:00:00", "interaction", None, 1.0),
    ]
    reasons = sorted(r.reason for r in rejected.collect())
    assert reasons == sorted(
        [
            "user_id: missing",
            "item_id: missing",
            "timestamp: not epoch seconds or ISO-8601",
            f"timestamp: after the logical date {DS}",
            "rating: not a finite number",
            "item_id: not in the item catalogue",
            "timestamp: duplicate event (same user, item, time, type)",
        ]
    )
    assert {r.source_file for r in rejected.collect()} == {"drop.csv"} and {r.ds for r in rejected.collect()} == {DS}


def test_non_finite_numbers_and_timestamps_before_the_floor_are_rejected(spark):
    rows = [
        ("u1", "i1", "1767225600", None, "inf"),
        ("u1", "i2", "1767225600", "Infinity", None),
        ("u2", "i1", "1767225600", "-Infinity", None),
        ("u2", "i2", "0", None, None),  # epoch zero: a broken clock
        ("u3", "i1", "1989-12-31T23:59:59Z", None, None),
        ("u3", "i2", "1990-01-01T00:00:00Z", "NaN", None),
        ("u4", "i1", "1990-01-01T00:00:00Z", "3", "0.5"),  # valid: on the floor
    ]
    raw = strings(spark, rows, ["user_id", "item_id", "timestamp", "rating", "weight"], "interactions")
    valid, rejected = validate_interactions(raw, DS, min_timestamp="1990-01-01")
    assert [(r.user_id, r.rating, r.weight) for r in valid.collect()] == [("u4", 3.0, 0.5)]
    assert sorted(r.reason for r in rejected.collect()) == [
        "rating: not a finite number",
        "rating: not a finite number",
        "rating: not a finite number",
        "timestamp: before ingest.min_timestamp 1990-01-01",
        "timestamp: before ingest.min_timestamp 1990-01-01",
        "weight: not a finite non-negative number",
    ]


def test_categories_as_json_lists_and_float_typed_ids(spark):
    raw = as_strings(
        spark.createDataFrame([(1.0, "A", '["Drama", "Thriller"]'), (20.0, "B", "Drama|Comedy"), (2.5, "C", "[]")],
                              ["item_id", "title", "categories"]),
        "items", "drop.parquet",
    )  # fmt: skip
    valid, _ = validate_items(raw, DS)
    got = {r.item_id: r.categories for r in valid.collect()}
    # Whole float ids read as the integers they stand for; others keep their text.
    assert got == {"1": ["Drama", "Thriller"], "20": ["Drama", "Comedy"], "2.5": []}


def test_item_rules_and_latest_row_wins(spark):
    rows = [
        ("i1", "Old title", "1767225600", "Drama|Comedy", None),
        ("i1", "New title", "1767312000", "Drama", "fun; dark"),
        ("i2", None, None, None, None),
        ("i3", "Later", "2027-01-01", None, None),
        ("i4", "Plain", None, "", None),
    ]
    raw = strings(spark, rows, ["item_id", "title", "updated_at", "categories", "tags"], "items")
    valid, rejected = validate_items(raw, DS)
    got = {r.item_id: (r.title, r.categories, r.tags) for r in valid.collect()}
    assert got == {"i1": ("New title", ["Drama"], ["fun", "dark"]), "i4": ("Plain", [], [])}
    assert sorted(r.reason for r in rejected.collect()) == [
        "item_id: superseded by a row for the same item with a later updated_at",
        "title: missing",
        f"updated_at: after the logical date {DS}",
    ]


def test_duplicate_rows_with_the_same_updated_at_keep_the_last_in_file_order(spark):
    rows = [("i1", "First", None), ("i1", "Second", None), ("i1", "Third", None), ("i2", "A", "5"), ("i2", "B", "5")]
    raw = strings(spark, rows, ["item_id", "title", "updated_at"], "items")
    valid, rejected = validate_items(raw, DS)
    assert sorted((r.item_id, r.title) for r in valid.collect()) == [("i1", "Third"), ("i2", "B")]
    assert {r.reason for r in rejected.collect()} == {
        "item_id: another row for the same item has the same updated_at (or none); the later row in file order wins"
    }


def test_user_interests_are_free_text_trimmed_and_blank_means_none(spark):
    rows = [("u1", "  space operas, heist films "), ("u2", "   "), ("u3", None)]
    valid, rejected = validate_users(strings(spark, rows, ["user_id", "interests"], "users"), DS)
    assert sorted((r.user_id, r.interests) for r in valid.collect()) == [
        ("u1", "space operas, heist films"), ("u2", None), ("u3", None)
    ]  # fmt: skip
    assert rejected.count() == 0


def test_user_rules_and_latest_row_wins(spark):
    rows = [
        ("u1", "young", "1767225600"),
        ("u1", "adult", "1767312000"),  # later row for u1 wins
        (" ", "x", None),
        ("u2", None, None),  # no segment is fine
        ("u3", "y", "2027-01-01"),
    ]
    raw = strings(spark, rows, ["user_id", "segment", "updated_at"], "users")
    valid, rejected = validate_users(raw, DS)
    assert sorted((r.user_id, r.segment, r.interests) for r in valid.collect()) == [("u1", "adult", None),
                                                                                   ("u2", None, None)]  # fmt: skip
    assert sorted(r.reason for r in rejected.collect()) == [
        "updated_at: after the logical date 2026-01-02",
        "user_id: missing",
        "user_id: superseded by a row for the same user with a later updated_at",
    ]


def test_list_columns_from_parquet_arrays(spark):
    df = spark.createDataFrame(
        [("i1", "T", ["A", "B"], ["x"])], "item_id string, title string, categories array<string>, tags array<string>"
    )
    valid, _ = validate_items(as_strings(df, "items", "items.parquet"), DS)
    (row,) = valid.collect()
    assert (row.categories, row.tags) == (["A", "B"], ["x"])


def test_a_json_list_cut_short_is_read_as_separated_text(spark):
    rows = [("i1", "T", '["Action", "Drama"', '["x"]'), ("i2", "T", "[Comedy]", "it's, 'quoted'")]
    valid, _ = validate_items(strings(spark, rows, ["item_id", "title", "categories", "tags"], "items"), DS)
    got = {r.item_id: (r.categories, r.tags) for r in valid.collect()}
    assert got == {"i1": (["Action", "Drama"], ["x"]), "i2": (["Comedy"], ["it's", "quoted"])}


def test_reject_limit_message_names_file_column_and_counts(spark):
    rows = [("u1", "i1", "bad")] * 3 + [("u1", "i1", "1767225600")] + [(None, "i1", "1767225600")]
    raw = strings(spark, rows, ["user_id", "item_id", "timestamp"], "interactions", "raw/interactions/ds=x/day.csv")
    _, rejected = validate_interactions(raw, DS)
    summaries = summarize_rejects(raw, rejected)
    assert summaries == [
        RejectSummary(
            "raw/interactions/ds=x/day.csv",
            5,
            4,
            {"timestamp: not epoch seconds or ISO-8601": 3, "user_id: missing": 1},
        )
    ]
    with pytest.raises(DataValidationError) as err:
        enforce_reject_limit(summaries, 0.05, "interactions", "quarantine/interactions/ds=x")
    message = str(err.value)
    assert "raw/interactions/ds=x/day.csv: 4 of 5 interactions rows rejected (80.0%, limit 5.0%)" in message
    assert "timestamp: not epoch seconds or ISO-8601: 3 rows" in message and "user_id: missing: 1 rows" in message
    assert "quarantine/interactions/ds=x" in message
    enforce_reject_limit(summaries, 0.9, "interactions", "q")  # under the limit: no error


def test_search_log_rules(spark):
    rows = [
        ("red shoes", "1767225600", "u1", "i1"),
        ("no click", "1767225600", None, None),  # a search without a click is fine
        (" ", "1767225600", "u1", None),
        ("late", "2027-01-01", "u1", None),
        ("unknown item", "1767225600", "u1", "zz"),
    ]
    raw = strings(spark, rows, ["query", "timestamp", "user_id", "item_id"], "queries")
    known = spark.createDataFrame([("i1",)], "item_id string")
    valid, rejected = validate_queries(raw, DS, known)
    assert sorted((r.query, r.item_id) for r in valid.collect()) == [("no click", None), ("red shoes", "i1")]
    assert sorted(r.reason for r in rejected.collect()) == [
        "item_id: not in the item catalogue",
        "query: missing",
        "timestamp: after the logical date 2026-01-02",
    ]

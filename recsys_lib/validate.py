"""Input validation for raw drops (Spark): typed valid rows, and rejected rows with a reason.

Every rule names its column, so a rejected share can be reported as "file, column, count".
Transforms take and return DataFrames; reading files and writing tables is the ingest job's.
Tests: tests/unit/recsys_lib/test_validate.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_lib.errors import DataValidationError, SchemaError
from recsys_lib.schema import (
    CATEGORIES_COL,
    DEFAULT_EVENT_TYPE,
    DESCRIPTION_COL,
    DS_COL,
    ENTITIES,
    EVENT_TYPE_COL,
    ITEM_COL,
    RATING_COL,
    REASON_COL,
    SEGMENT_COL,
    SOURCE_FILE_COL,
    TAGS_COL,
    TIMESTAMP_COL,
    TITLE_COL,
    UPDATED_AT_COL,
    USER_COL,
    WEIGHT_COL,
    day_end,
)

# Epoch values at or above this are read as milliseconds (1e11 s would be the year 5138).
EPOCH_MILLIS_THRESHOLD = 1e11
_LIST_SPLIT = r"\s*[|,;]\s*"


@dataclass(frozen=True)
class RejectSummary:
    source_file: str
    total: int
    rejected: int
    by_reason: dict[str, int]

    @property
    def fraction(self) -> float:
        return self.rejected / self.total if self.total else 0.0


def check_columns(columns: list[str], entity: str, source: str) -> None:
    """Raise SchemaError naming the file and the missing required columns."""
    missing = [c for c in ENTITIES[entity].required if c not in columns]
    if missing:
        raise SchemaError(
            f"{source}: missing required {entity} column(s) {', '.join(missing)} "
            f"(found: {', '.join(columns) or 'none'})"
        )


def as_strings(df: DataFrame, entity: str, source: str) -> DataFrame:
    """Project a raw file onto the entity's contract columns, every value as a trimmed string.

    Lists (Parquet/JSON arrays) are joined with '|' so that one parser handles every format.
    Unknown columns are dropped; missing optional columns become null.
    """
    check_columns(df.columns, entity, source)
    e = ENTITIES[entity]
    cols = []
    for name in e.required + e.optional:
        if name in df.columns:
            dtype = df.schema[name].dataType
            if isinstance(dtype, T.ArrayType):
                value = F.concat_ws("|", F.col(name).cast("array<string>"))
            else:
                value = F.col(name).cast("string")
            value = F.trim(value)
            cols.append(F.when(value == "", None).otherwise(value).alias(name))
        else:
            cols.append(F.lit(None).cast("string").alias(name))
    return df.select(*cols, F.lit(source).alias(SOURCE_FILE_COL))


def parse_time(col: Column) -> Column:
    """Epoch seconds (or milliseconds), or an ISO-8601 string, to a timestamp; null if neither."""
    number = col.try_cast("double")
    seconds = F.when(number >= EPOCH_MILLIS_THRESHOLD, number / 1000).otherwise(number)
    return F.when(number.isNotNull(), F.timestamp_seconds(seconds)).otherwise(F.try_to_timestamp(col))


def _first_failure(rules: list[tuple[Column, str]]) -> Column:
    reason = F.lit(None).cast("string")
    for failed, text in reversed(rules):
        reason = F.when(failed, F.lit(text)).otherwise(reason)
    return reason


def validate_interactions(raw: DataFrame, ds: str, known_items: DataFrame | None = None) -> tuple[DataFrame, DataFrame]:
    """Split string-typed interaction rows into (valid typed rows, rejected rows with a reason).

    Args:
        raw: output of ``as_strings(..., "interactions", ...)``.
        ds: logical date; events after its end are rejected.
        known_items: one column ``item_id`` of catalogue items up to ds; None skips the check.
    """
    ts = parse_time(F.col(TIMESTAMP_COL))
    rating = F.col(RATING_COL).try_cast("double")
    weight = F.col(WEIGHT_COL).try_cast("double")
    df = raw.withColumn("_ts", ts).withColumn("_rating", rating).withColumn("_weight", weight)
    if known_items is not None:
        known = known_items.select(F.col(ITEM_COL).alias("_known_item")).distinct().withColumn("_is_known", F.lit(True))
        # A plain join: Spark broadcasts small catalogues by itself and shuffles large ones.
        df = df.join(known, df[ITEM_COL] == known["_known_item"], "left").drop("_known_item")
    else:
        df = df.withColumn("_is_known", F.lit(True))
    rules = [
        (F.col(USER_COL).isNull(), "user_id: missing"),
        (F.col(ITEM_COL).isNull(), "item_id: missing"),
        (F.col(TIMESTAMP_COL).isNull(), "timestamp: missing"),
        (F.col("_ts").isNull(), "timestamp: not epoch seconds or ISO-8601"),
        (F.col("_ts") >= F.lit(day_end(ds)), f"timestamp: after the logical date {ds}"),
        (F.col(RATING_COL).isNotNull() & (F.col("_rating").isNull() | F.isnan("_rating")), "rating: not a number"),
        (
            F.col(WEIGHT_COL).isNotNull() & (F.col("_weight").isNull() | F.isnan("_weight") | (F.col("_weight") < 0)),
            "weight: not a non-negative number",
        ),
        (F.col("_is_known").isNull(), "item_id: not in the item catalogue"),
    ]
    df = df.withColumn(REASON_COL, _first_failure(rules))
    # Exact repeats of an event (same user, item, time, type) are rejected after the first copy.
    event_type = F.coalesce(F.col(EVENT_TYPE_COL), F.lit(DEFAULT_EVENT_TYPE))
    key = [USER_COL, ITEM_COL, "_ts", "_event_type"]
    df = df.withColumn("_event_type", event_type)
    df = _reject_repeats(df, key, [F.col(SOURCE_FILE_COL)], "timestamp: duplicate event (same user, item, time, type)")
    valid = df.where(F.col(REASON_COL).isNull()).select(
        F.col(USER_COL),
        F.col(ITEM_COL),
        F.col("_ts").alias(TIMESTAMP_COL),
        F.col("_event_type").alias(EVENT_TYPE_COL),
        F.col("_rating").alias(RATING_COL),
        F.coalesce(F.col("_weight"), F.lit(1.0)).alias(WEIGHT_COL),
    )
    rejected = _rejected(df, "interactions", ds)
    return valid, rejected


def validate_items(raw: DataFrame, ds: str) -> tuple[DataFrame, DataFrame]:
    """Split string-typed item rows into (valid typed rows, rejected rows with a reason).

    A drop may list an item more than once; the row with the latest ``updated_at`` wins and the
    others are rejected as superseded.
    """
    required = [(F.col(ITEM_COL).isNull(), "item_id: missing"), (F.col(TITLE_COL).isNull(), "title: missing")]
    df = _latest_version_wins(raw, ds, ITEM_COL, "item", required)
    valid = df.where(F.col(REASON_COL).isNull()).select(
        F.col(ITEM_COL),
        F.col(TITLE_COL),
        F.col(DESCRIPTION_COL),
        _split_list(CATEGORIES_COL).alias(CATEGORIES_COL),
        _split_list(TAGS_COL).alias(TAGS_COL),
        F.col("_updated_at").alias(UPDATED_AT_COL),
    )
    return valid, _rejected(df, "items", ds)


def validate_users(raw: DataFrame, ds: str) -> tuple[DataFrame, DataFrame]:
    """Split string-typed user rows into (valid typed rows, rejected rows with a reason).

    As with items, the latest row (by ``updated_at``) of a user listed twice wins.
    """
    df = _latest_version_wins(raw, ds, USER_COL, "user", [(F.col(USER_COL).isNull(), "user_id: missing")])
    valid = df.where(F.col(REASON_COL).isNull()).select(
        F.col(USER_COL), F.col(SEGMENT_COL), F.col("_updated_at").alias(UPDATED_AT_COL)
    )
    return valid, _rejected(df, "users", ds)


def _latest_version_wins(raw: DataFrame, ds: str, key: str, noun: str, required: list) -> DataFrame:
    """Rows of a versioned entity (items, users) with a reason: the ``required`` rules, a valid
    ``updated_at`` not after ds, and, per ``key``, only the latest row (by updated_at) valid."""
    df = raw.withColumn("_updated_at", parse_time(F.col(UPDATED_AT_COL)))
    rules = required + [
        (
            F.col(UPDATED_AT_COL).isNotNull() & F.col("_updated_at").isNull(),
            "updated_at: not epoch seconds or ISO-8601",
        ),
        (F.col("_updated_at") >= F.lit(day_end(ds)), f"updated_at: after the logical date {ds}"),
    ]
    df = df.withColumn(REASON_COL, _first_failure(rules))
    latest_first = [F.col("_updated_at").desc_nulls_last(), F.col(SOURCE_FILE_COL).desc()]
    return _reject_repeats(df, [key], latest_first, f"{key}: superseded by a later row for the same {noun}")


def _reject_repeats(df: DataFrame, key: list[str], order: list[Column], reason: str) -> DataFrame:
    """Among rows still valid that share ``key``, keep the first by ``order``; reject the others."""
    w = Window.partitionBy(*key, F.col(REASON_COL).isNull()).orderBy(*order)
    repeat = F.col(REASON_COL).isNull() & (F.row_number().over(w) > 1)
    return df.withColumn(REASON_COL, F.when(repeat, F.lit(reason)).otherwise(F.col(REASON_COL)))


def _split_list(name: str) -> Column:
    parts = F.split(F.coalesce(F.col(name), F.lit("")), _LIST_SPLIT)
    return F.filter(F.transform(parts, lambda x: F.trim(x)), lambda x: x != "")


def _rejected(df: DataFrame, entity: str, ds: str) -> DataFrame:
    e = ENTITIES[entity]
    return df.where(F.col(REASON_COL).isNotNull()).select(
        *[F.col(c) for c in e.required + e.optional],
        F.col(REASON_COL),
        F.col(SOURCE_FILE_COL),
        F.lit(ds).alias(DS_COL),
    )


def summarize_rejects(raw: DataFrame, rejected: DataFrame) -> list[RejectSummary]:
    """Per source file: total rows, rejected rows and counts per reason."""
    totals = {r[SOURCE_FILE_COL]: r["count"] for r in raw.groupBy(SOURCE_FILE_COL).count().collect()}
    reasons: dict[str, dict[str, int]] = {f: {} for f in totals}
    for r in rejected.groupBy(SOURCE_FILE_COL, REASON_COL).count().collect():
        reasons.setdefault(r[SOURCE_FILE_COL], {})[r[REASON_COL]] = r["count"]
    return [
        RejectSummary(f, totals.get(f, 0), sum(reasons[f].values()), dict(sorted(reasons[f].items())))
        for f in sorted(reasons)
    ]


def enforce_reject_limit(summaries: list[RejectSummary], max_fraction: float, entity: str, quarantine_uri: str) -> None:
    """Raise DataValidationError naming every file over the limit, its columns and counts."""
    over = [s for s in summaries if s.total and s.fraction > max_fraction]
    if not over:
        return
    lines = []
    for s in over:
        reasons = "; ".join(f"{reason}: {n:,} rows" for reason, n in s.by_reason.items())
        lines.append(
            f"{s.source_file}: {s.rejected:,} of {s.total:,} {entity} rows rejected "
            f"({s.fraction:.1%}, limit {max_fraction:.1%}) - {reasons}"
        )
    raise DataValidationError(
        "\n".join(lines) + f"\nRejected rows with their reasons: {quarantine_uri}. Nothing was written to the lake."
    )

"""Input validation for raw drops (Spark): typed valid rows, and rejected rows with a reason.

Every rule names its column, so a rejected share can be reported as "file, column, count".
Transforms take and return DataFrames; reading files and writing tables is the ingest job's.
Tests: tests/unit/recsys_lib/test_validate.py.
"""

from __future__ import annotations

import difflib
import logging
import re
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
    INTERESTS_COL,
    ITEM_COL,
    QUERY_COL,
    RATING_COL,
    RAW_RECORD_COL,
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

# Epoch numbers are read by their size: from 1e11 as milliseconds (1e11 s would be the year
# 5138), from 1e14 as microseconds, from 1e17 as nanoseconds (each the same year in the finer unit).
EPOCH_UNITS = ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3))
_LIST_SPLIT = r"\s*[|,;]\s*"
ROW_COL = "_row"
CSV_SEPARATORS = (";", "\t", "|")  # tried, in this order, when a CSV header reads as one column
log = logging.getLogger(__name__)
CORRUPT_RECORD = "_corrupt_record"  # Spark's column for JSON lines it cannot parse


def _unparseable() -> tuple[Column, str]:
    return F.col(RAW_RECORD_COL).isNotNull(), f"row: not valid JSON (its text is kept in {RAW_RECORD_COL})"


@dataclass(frozen=True)
class RejectSummary:
    source_file: str
    total: int
    rejected: int
    by_reason: dict[str, int]

    @property
    def fraction(self) -> float:
        return self.rejected / self.total if self.total else 0.0


def _outside_contract(columns: list[str], entity: str) -> list[str]:
    e = ENTITIES[entity]
    return [c for c in columns if c not in e.required + e.optional and c != CORRUPT_RECORD]


def csv_separator(header: list[str], entity: str) -> str | None:
    """The separator of a CSV file read as comma-separated whose header came out as one column,
    when splitting it by ';', a tab or '|' names every required column (a spreadsheet's export
    in many locales); None when the header is not such a case."""
    if len(header) != 1:
        return None
    for separator in CSV_SEPARATORS:
        names = [name.strip().strip('"') for name in header[0].split(separator)]
        if all(column in names for column in ENTITIES[entity].required):
            return separator
    return None


def check_columns(columns: list[str], entity: str, source: str) -> None:
    """Raise SchemaError naming the file and the missing required columns (or why they look
    missing: an empty file, a header naming one twice, JSON that is not one object per line)."""
    missing = [c for c in ENTITIES[entity].required if c not in columns]
    if missing and not columns:
        what = "no header row" if re.search(r"\.csv(\.gz)?$", source.lower()) else "no records"
        raise SchemaError(f"{source}: empty file ({what})")
    if missing and columns == [CORRUPT_RECORD]:
        raise SchemaError(
            f"{source}: not JSON lines (one object per line); a JSON array or an object spread over "
            "several lines is not read: convert it, e.g. jq -c '.[]'"
        )
    # Spark reads a header naming a column twice as <name><position> for each copy.
    twice = [c for c in missing if sum(bool(re.fullmatch(rf"{re.escape(c)}\d+", x)) for x in columns) > 1]
    if twice:
        raise SchemaError(f"{source}: column(s) {', '.join(twice)} appear more than once in the header")
    if missing:
        unknown = _outside_contract(columns, entity)
        hints = [f"{m}?" for c in missing for m in difflib.get_close_matches(c, unknown, n=1, cutoff=0.6)]
        raise SchemaError(
            f"{source}: missing required {entity} column(s) {', '.join(missing)} "
            f"(found: {', '.join(columns) or 'none'}{'; misspelt: ' + ', '.join(hints) if hints else ''})"
        )


def as_strings(df: DataFrame, entity: str, source: str) -> DataFrame:
    """Project a raw file onto the entity's contract columns, every value as a trimmed string.

    Lists (Parquet/JSON arrays) are joined with '|' so that one parser handles every format.
    Unknown columns are dropped, with a warning that names them (and the contract column a
    misspelt one was probably meant to be); missing optional columns become null.
    """
    check_columns(df.columns, entity, source)
    e = ENTITIES[entity]
    ignored = _outside_contract(df.columns, entity)
    if ignored:
        log.warning("%s: column(s) not in the %s contract, ignored: %s", source, entity, ", ".join(
            c + "".join(f" (did you mean {m}?)" for m in difflib.get_close_matches(c, e.optional, n=1, cutoff=0.75))
            for c in ignored
        ))
    cols = []
    for name in e.required + e.optional:
        if name in df.columns:
            dtype = df.schema[name].dataType
            if isinstance(dtype, T.ArrayType):
                value = F.concat_ws("|", F.col(name).cast("array<string>"))
            elif name in (USER_COL, ITEM_COL) and isinstance(dtype, (T.FloatType, T.DoubleType, T.DecimalType)):
                # A numeric id column written as floats (pandas does this to ids with a gap):
                # whole values are read as the integers they stand for, "1.0" as "1".
                number = F.col(name)
                value = F.when(number == F.floor(number), number.cast("long").cast("string")).otherwise(
                    number.cast("string")
                )
            else:
                value = F.col(name).cast("string")
            value = F.trim(value)
            cols.append(F.when(value == "", None).otherwise(value).alias(name))
        else:
            cols.append(F.lit(None).cast("string").alias(name))
    # A JSON line Spark could not parse keeps its text (Spark's _corrupt_record) for quarantine.
    corrupt = F.col(CORRUPT_RECORD) if CORRUPT_RECORD in df.columns else F.lit(None).cast("string")
    # The row's position in its file (increasing in file order): the tie-break between
    # duplicate rows with the same updated_at.
    return df.select(
        *cols,
        corrupt.alias(RAW_RECORD_COL),
        F.lit(source).alias(SOURCE_FILE_COL),
        F.monotonically_increasing_id().alias(ROW_COL),
    )


def parse_time(col: Column) -> Column:
    """Epoch seconds (or milli-, micro-, nanoseconds), or an ISO-8601 string, to a timestamp;
    null if neither."""
    number = col.try_cast("double")
    seconds = F
    for threshold, per_second in EPOCH_UNITS:  # largest first: the first that holds decides
        seconds = seconds.when(number >= threshold, number / per_second)
    seconds = seconds.otherwise(number)
    return F.when(number.isNotNull(), F.timestamp_seconds(seconds)).otherwise(F.try_to_timestamp(col))


def _first_failure(rules: list[tuple[Column, str | Column]]) -> Column:
    reason = F.lit(None).cast("string")
    for failed, text in reversed(rules):
        reason = F.when(failed, F.lit(text) if isinstance(text, str) else text).otherwise(reason)
    return reason


def _not_finite(col: str) -> Column:
    return F.isnan(col) | (F.abs(F.col(col)) == float("inf"))


def _mark_known_items(df: DataFrame, known_items: DataFrame | None) -> DataFrame:
    """``_is_known``: true where ``item_id`` is in ``known_items`` (null where not); all true
    when there is no catalogue to check against."""
    if known_items is None:
        return df.withColumn("_is_known", F.lit(True))
    known = known_items.select(F.col(ITEM_COL).alias("_known_item")).distinct().withColumn("_is_known", F.lit(True))
    # A plain join: Spark broadcasts small catalogues by itself and shuffles large ones.
    return df.join(known, df[ITEM_COL] == known["_known_item"], "left").drop("_known_item")


def _before(min_timestamp: str | None) -> Column:
    """Rows whose parsed time (``_ts``) is before ``min_timestamp`` (never, when unset)."""
    return F.col("_ts") < F.lit(min_timestamp).cast("timestamp") if min_timestamp else F.lit(False)


def validate_interactions(
    raw: DataFrame,
    ds: str,
    known_items: DataFrame | None = None,
    rejected_items: DataFrame | None = None,
    min_timestamp: str | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Split string-typed interaction rows into (valid typed rows, rejected rows with a reason).

    Args:
        raw: output of ``as_strings(..., "interactions", ...)``.
        ds: logical date; events after its end are rejected.
        known_items: one column ``item_id`` of catalogue items up to ds; None skips the check.
        rejected_items: this drop's rejected item rows (item_id, reason): an event on an item
            that is unknown because its row was rejected says so, with the row's reason.
        min_timestamp: events before this date (ISO-8601) are rejected.
    """
    ts = parse_time(F.col(TIMESTAMP_COL))
    rating = F.col(RATING_COL).try_cast("double")
    weight = F.col(WEIGHT_COL).try_cast("double")
    df = raw.withColumn("_ts", ts).withColumn("_rating", rating).withColumn("_weight", weight)
    df = _mark_known_items(df, known_items)
    too_early = _before(min_timestamp)
    item_rejection = F.lit(None).cast("string")
    if known_items is not None and rejected_items is not None:
        why = (
            rejected_items.where(F.col(ITEM_COL).isNotNull())
            .groupBy(F.col(ITEM_COL).alias("_rejected_item"))
            .agg(F.min(REASON_COL).alias("_item_rejection"))
        )
        df = df.join(why, df[ITEM_COL] == why["_rejected_item"], "left").drop("_rejected_item")
        item_rejection = F.col("_item_rejection")
    rules = [
        _unparseable(),
        (F.col(USER_COL).isNull(), "user_id: missing"),
        (F.col(ITEM_COL).isNull(), "item_id: missing"),
        (F.col(TIMESTAMP_COL).isNull(), "timestamp: missing"),
        (F.col("_ts").isNull(), "timestamp: not epoch seconds or ISO-8601"),
        (F.col("_ts") >= F.lit(day_end(ds)), f"timestamp: after the logical date {ds}"),
        (too_early, f"timestamp: before ingest.min_timestamp {min_timestamp}"),
        (
            F.col(RATING_COL).isNotNull() & (F.col("_rating").isNull() | _not_finite("_rating")),
            "rating: not a finite number",
        ),
        (
            F.col(WEIGHT_COL).isNotNull()
            & (F.col("_weight").isNull() | _not_finite("_weight") | (F.col("_weight") < 0)),
            "weight: not a finite non-negative number",
        ),
        (
            F.col("_is_known").isNull() & item_rejection.isNotNull(),
            F.concat(F.lit("item_id: its catalogue row was rejected ("), item_rejection, F.lit(")")),
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


def validate_queries(
    raw: DataFrame, ds: str, known_items: DataFrame | None = None, min_timestamp: str | None = None
) -> tuple[DataFrame, DataFrame]:
    """Split string-typed search-log rows into (valid typed rows, rejected rows with a reason).

    A query without a click (no ``item_id``) is valid: it counts towards the frequent queries.
    A click on an item outside the catalogue known up to ds is rejected (``known_items``).
    """
    ts = parse_time(F.col(TIMESTAMP_COL))
    df = _mark_known_items(raw.withColumn("_ts", ts), known_items)
    too_early = _before(min_timestamp)
    rules = [
        _unparseable(),
        (F.col(QUERY_COL).isNull(), "query: missing"),
        (F.col(TIMESTAMP_COL).isNull(), "timestamp: missing"),
        (F.col("_ts").isNull(), "timestamp: not epoch seconds or ISO-8601"),
        (F.col("_ts") >= F.lit(day_end(ds)), f"timestamp: after the logical date {ds}"),
        (too_early, f"timestamp: before ingest.min_timestamp {min_timestamp}"),
        (F.col(ITEM_COL).isNotNull() & F.col("_is_known").isNull(), "item_id: not in the item catalogue"),
    ]
    df = df.withColumn(REASON_COL, _first_failure(rules))
    valid = df.where(F.col(REASON_COL).isNull()).select(
        F.col(QUERY_COL), F.col("_ts").alias(TIMESTAMP_COL), F.col(USER_COL), F.col(ITEM_COL)
    )
    return valid, _rejected(df, "queries", ds)


def validate_items(raw: DataFrame, ds: str) -> tuple[DataFrame, DataFrame]:
    """Split string-typed item rows into (valid typed rows, rejected rows with a reason).

    A drop may list an item more than once; the row with the latest ``updated_at`` wins (on a
    tie, the last row in file order) and the others are rejected, the reason saying which case.
    """
    required = [
        _unparseable(),
        (F.col(ITEM_COL).isNull(), "item_id: missing"),
        (F.col(TITLE_COL).isNull(), "title: missing"),
    ]
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
    required = [_unparseable(), (F.col(USER_COL).isNull(), "user_id: missing")]
    df = _latest_version_wins(raw, ds, USER_COL, "user", required)
    interests = F.when(F.trim(INTERESTS_COL) != "", F.trim(INTERESTS_COL))
    valid = df.where(F.col(REASON_COL).isNull()).select(
        F.col(USER_COL), F.col(SEGMENT_COL), interests.alias(INTERESTS_COL), F.col("_updated_at").alias(UPDATED_AT_COL)
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
    # The rule: the latest updated_at wins; among rows with the same one (or none), the last row
    # (by file name, then position in the file) wins, as a later line of a log would.
    latest_first = [F.col("_updated_at").desc_nulls_last(), F.col(SOURCE_FILE_COL).desc(), F.col(ROW_COL).desc()]
    w = Window.partitionBy(key, F.col(REASON_COL).isNull()).orderBy(*latest_first)
    repeat = F.col(REASON_COL).isNull() & (F.row_number().over(w) > 1)
    tie = F.first("_updated_at").over(w).eqNullSafe(F.col("_updated_at"))
    tied = f"{key}: another row for the same {noun} has the same updated_at (or none); the later row in file order wins"
    reason = F.when(tie, F.lit(tied))
    reason = reason.otherwise(F.lit(f"{key}: superseded by a row for the same {noun} with a later updated_at"))
    return df.withColumn(REASON_COL, F.when(repeat, reason).otherwise(F.col(REASON_COL)))


def _reject_repeats(df: DataFrame, key: list[str], order: list[Column], reason: str) -> DataFrame:
    """Among rows still valid that share ``key``, keep the first by ``order``; reject the others."""
    w = Window.partitionBy(*key, F.col(REASON_COL).isNull()).orderBy(*order)
    repeat = F.col(REASON_COL).isNull() & (F.row_number().over(w) > 1)
    return df.withColumn(REASON_COL, F.when(repeat, F.lit(reason)).otherwise(F.col(REASON_COL)))


def _split_list(name: str) -> Column:
    """A list column from a JSON array (``["Drama", "Thriller"]``) or a '|', ',' or ';'
    separated string (``Drama|Thriller``). A JSON array that does not parse (``["Drama",
    "Thriller"``, cut short) is read as separated text, its brackets and quotes trimmed from
    each element."""
    text = F.coalesce(F.col(name), F.lit(""))
    as_json = F.transform(F.from_json(text, "array<string>"), lambda x: F.trim(x))
    unquoted = r"^[\s\[\]\"']+|[\s\[\]\"']+$"
    separated = F.transform(F.split(text, _LIST_SPLIT), lambda x: F.regexp_replace(x, unquoted, ""))
    trimmed = F.coalesce(F.when(text.startswith("["), as_json), separated)
    return F.filter(trimmed, lambda x: x.isNotNull() & (x != ""))


def _rejected(df: DataFrame, entity: str, ds: str) -> DataFrame:
    e = ENTITIES[entity]
    return df.where(F.col(REASON_COL).isNotNull()).select(
        *[F.col(c) for c in e.required + e.optional],
        F.col(RAW_RECORD_COL),
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

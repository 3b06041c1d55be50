"""The lake through Spark: reading raw drops and lake partitions, writing Spark tables.

Keys come from ``recsys_lib.storage``; this module adds how Spark reads and writes them. Raw
drops are CSV (header, RFC 4180 quoting), Parquet or JSON lines, told apart by file suffix.
Tests: tests/unit/recsys_lib/test_lake.py (Spark on a local directory).
"""

from __future__ import annotations

import logging
from functools import reduce

from pyspark.sql import DataFrame, SparkSession

from recsys_lib.errors import MissingInput, SchemaError
from recsys_lib.schema import INTERESTS_COL, SEGMENT_COL, USER_COL
from recsys_lib.storage import Storage
from recsys_lib.validate import as_strings, csv_separator

log = logging.getLogger(__name__)

RAW_FORMATS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".jsonl.gz": "json",
}


def raw_format(key: str) -> str | None:
    """The Spark reader for a raw file, by suffix; None for files that are not data."""
    for suffix, fmt in RAW_FORMATS.items():
        if key.lower().endswith(suffix):
            return fmt
    return None


# Python's codec names -> the charsets Spark's CSV and JSON readers accept.
SPARK_CHARSETS = {
    "utf-8": "utf-8", "iso8859-1": "iso-8859-1", "ascii": "us-ascii", "utf-16": "utf-16",
    "utf-16-be": "utf-16be", "utf-16-le": "utf-16le", "utf-32": "utf-32",
}  # fmt: skip


def spark_charset(encoding: str) -> str:
    """Spark's name for ``encoding`` (any Python alias, e.g. latin-1), or SchemaError."""
    import codecs

    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise SchemaError(f"ingest.encoding {encoding!r} is not a known text encoding") from None
    if name not in SPARK_CHARSETS:
        raise SchemaError(
            f"ingest.encoding {encoding!r}: Spark reads only {', '.join(sorted(set(SPARK_CHARSETS.values())))}; "
            "convert the files to UTF-8"
        )
    return SPARK_CHARSETS[name]


def check_encoding(storage: Storage, key: str, encoding: str) -> None:
    """Raise SchemaError naming the file and the byte offset of the first byte sequence that is
    not valid ``encoding`` (Spark would silently read it as U+FFFD). Gzip files are checked
    decompressed."""
    import codecs

    fs, path = storage.work.arrow_file(key)
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset = 0
    with fs.open_input_stream(path) as stream:  # compression detected from the suffix
        while chunk := stream.read(1 << 24):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise SchemaError(
                    f"{storage.work.uri(key)}: not valid {encoding} at byte {offset - pending + e.start:,} "
                    f"({e.reason}); convert the file or set ingest.encoding to its encoding (e.g. latin-1)"
                ) from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise SchemaError(
                f"{storage.work.uri(key)}: not valid {encoding}: truncated at the end ({e.reason})"
            ) from None


def read_raw_drop(
    spark: SparkSession, storage: Storage, entity: str, ds: str, encoding: str = "utf-8"
) -> DataFrame | None:
    """Union of every readable file of one drop, projected to contract columns as strings.

    Text files (CSV, JSON lines) must be valid ``encoding``. Returns None when the drop folder
    holds no data files.
    """
    charset = spark_charset(encoding)
    frames = []
    for key in storage.raw_files(entity, ds):
        fmt = raw_format(key)
        if fmt is None:
            continue
        path = storage.spark_path(key)
        if fmt != "parquet":
            check_encoding(storage, key, encoding)
        if fmt == "csv":
            # RFC 4180 quoting: a quote inside a quoted field is written twice.
            options = dict(header=True, inferSchema=False, escape='"', multiLine=True, encoding=charset)
            df = spark.read.csv(path, **options)
            separator = csv_separator(df.columns, entity)
            if separator:
                log.info("%s: separated by %r, not commas: read as such", storage.work.uri(key), separator)
                df = spark.read.csv(path, sep=separator, **options)
        elif fmt == "json":
            df = spark.read.json(path, encoding=charset)
        else:
            df = spark.read.parquet(path)
        frames.append(as_strings(df, entity, source=storage.work.uri(key)))
    if not frames:
        return None
    return reduce(lambda a, b: a.unionByName(b), frames)


def lake_days(storage: Storage, entity: str, ds: str, before: bool = False) -> list[str]:
    """The ds partitions of ``entity`` up to ds (or strictly before it)."""
    return [d for d in storage.partitions(Storage.lake(entity)) if d < ds or (d == ds and not before)]


def read_lake(spark: SparkSession, storage: Storage, entity: str, ds: str, before: bool = False) -> DataFrame:
    """Every lake partition of ``entity`` up to and including ds (or before it), with its ds column."""
    days = lake_days(storage, entity, ds, before)
    if not days:
        raise MissingInput(
            f"no {entity} in the lake {'before' if before else 'up to'} {ds} "
            f"({storage.work.uri(Storage.lake(entity))}): run the ingest stage first"
        )
    # mergeSchema: a partition written before an optional column joined the contract lacks it.
    reader = spark.read.option("basePath", storage.spark_path(Storage.lake(entity))).option("mergeSchema", "true")
    return reader.parquet(
        *[storage.spark_path(Storage.lake_partition(entity, d)) for d in days]
    )


def read_registered_users(spark: SparkSession, storage: Storage, ds: str) -> DataFrame:
    """The latest row of every registered user up to ds (user_id, segment, interests); none if
    no drop has had a users file (users are an optional input)."""
    from pyspark.sql import functions as F

    from recsys_lib.features import latest_rows

    if not lake_days(storage, "users", ds):
        return spark.createDataFrame([], f"{USER_COL} string, {SEGMENT_COL} string, {INTERESTS_COL} string")
    users = latest_rows(read_lake(spark, storage, "users", ds), USER_COL)
    if INTERESTS_COL not in users.columns:
        users = users.withColumn(INTERESTS_COL, F.lit(None).cast("string"))
    return users.select(USER_COL, SEGMENT_COL, INTERESTS_COL)


def read_search_log(spark: SparkSession, storage: Storage, ds: str) -> DataFrame:
    """Every search-log row up to ds (query, timestamp, user_id, item_id); none if no drop has
    had a queries file (the search log is an optional input)."""
    from recsys_lib.features import SEARCH_LOG_SCHEMA

    if not lake_days(storage, "queries", ds):
        return spark.createDataFrame([], SEARCH_LOG_SCHEMA)
    return read_lake(spark, storage, "queries", ds).drop("ds")


def write_table(df: DataFrame, storage: Storage, key: str) -> str:
    """Write ``df`` as the Parquet table at ``key`` of the work store, replacing it; returns its URI."""
    df.write.mode("overwrite").parquet(storage.spark_path(key))
    return storage.work.uri(key)

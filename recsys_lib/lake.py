"""The lake through Spark: reading raw drops and lake partitions, writing Spark tables.

Keys come from ``recsys_lib.storage``; this module adds how Spark reads and writes them. Raw
drops are CSV (header, RFC 4180 quoting), Parquet or JSON lines, told apart by file suffix.
Tests: tests/unit/recsys_lib/test_lake.py (Spark on a local directory).
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import DataFrame, SparkSession

from recsys_lib.errors import MissingInput
from recsys_lib.schema import SEGMENT_COL, USER_COL
from recsys_lib.storage import Storage
from recsys_lib.validate import as_strings

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


def read_raw_drop(spark: SparkSession, storage: Storage, entity: str, ds: str) -> DataFrame | None:
    """Union of every readable file of one drop, projected to contract columns as strings.

    Returns None when the drop folder holds no data files.
    """
    frames = []
    for key in storage.raw_files(entity, ds):
        fmt = raw_format(key)
        if fmt is None:
            continue
        path = storage.spark_path(key)
        if fmt == "csv":
            # RFC 4180 quoting: a quote inside a quoted field is written twice.
            df = spark.read.csv(path, header=True, inferSchema=False, escape='"', multiLine=True)
        elif fmt == "json":
            df = spark.read.json(path)
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
    return spark.read.option("basePath", storage.spark_path(Storage.lake(entity))).parquet(
        *[storage.spark_path(Storage.lake_partition(entity, d)) for d in days]
    )


def read_registered_users(spark: SparkSession, storage: Storage, ds: str) -> DataFrame:
    """The latest row of every registered user up to ds (user_id, segment); none if no drop has
    had a users file (users are an optional input)."""
    from recsys_lib.features import latest_rows

    if not lake_days(storage, "users", ds):
        return spark.createDataFrame([], f"{USER_COL} string, {SEGMENT_COL} string")
    return latest_rows(read_lake(spark, storage, "users", ds), USER_COL).select(USER_COL, SEGMENT_COL)


def write_table(df: DataFrame, storage: Storage, key: str) -> str:
    """Write ``df`` as the Parquet table at ``key`` of the work store, replacing it; returns its URI."""
    df.write.mode("overwrite").parquet(storage.spark_path(key))
    return storage.work.uri(key)

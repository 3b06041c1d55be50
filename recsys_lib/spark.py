"""The Spark session, built from settings (never from globals or ad-hoc strings)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from recsys_lib.settings import Settings

# Spark's JVM log: warnings on stderr, so that a command's stdout is its own output.
LOG4J2_CONFIG = Path(__file__).resolve().parent / "conf" / "log4j2.properties"


def get_spark(settings: Settings, app_name: str = "recsys"):
    """Return the active session or build one from ``settings.spark``.

    The session is shared by the stages that run in one process (``airflow dags test``, the
    ``recsys`` CLI); on a cluster each job is its own spark-submit and builds its own.
    """
    from pyspark.sql import SparkSession

    from recsys_lib.logs import quiet_library_logs

    quiet_library_logs()
    # Executors must run the same interpreter as the driver (the project's virtualenv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if settings.spark.master.startswith("local"):
        # A local session talks to itself on loopback (and says nothing about the host's name).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark.master)
        .config("spark.driver.memory", settings.spark.driver_memory)
        .config("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        # ds=YYYY-MM-DD folders stay strings, the same type every table's ds column has.
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.parquet.compression.codec", "zstd")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Iterative MLlib jobs (ALS in evaluate) serialise a lineage that deepens every iteration;
        # Java serialisation recurses through it and overflowed the default thread stack once in CI
        # (the trace: thousands of ObjectOutputStream frames). 16 MB stacks give it room.
        .config("spark.driver.extraJavaOptions", f"-Xss16m -Dlog4j2.configurationFile={LOG4J2_CONFIG.as_uri()}")
        .config("spark.executor.extraJavaOptions", "-Xss16m")
    )
    for entry in settings.spark.conf:
        key, sep, value = entry.partition("=")
        if not sep:
            raise ValueError(f"spark.conf entry {entry!r} is not key=value")
        builder = builder.config(key.strip(), value.strip())
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark

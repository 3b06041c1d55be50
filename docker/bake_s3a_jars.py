"""Bake hadoop-aws, and the AWS SDK it was built against, into pyspark's jars folder.

Run once at image build time, so Spark reads and writes ``s3a://`` with nothing fetched at run
time. The hadoop-aws version is the one of the Hadoop client jars that pyspark ships (a mismatch
fails at run time with missing classes); Spark's own dependency resolver (Ivy, Maven Central)
picks the matching AWS SDK bundle.

    python docker/bake_s3a_jars.py
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path


def pyspark_jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def hadoop_version(jars: Path) -> str:
    names = [p.name for p in jars.glob("hadoop-client-api-*.jar")]
    versions = {m.group(1) for name in names if (m := re.search(r"-api-(.+)\.jar$", name))}
    if len(versions) != 1:
        raise SystemExit(f"expected one hadoop-client-api jar in {jars}, found {sorted(versions) or 'none'}")
    return versions.pop()


def resolve(package: str, ivy_home: Path) -> list[Path]:
    """The package's jars and its runtime dependencies, through Spark's own resolver."""
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.jars.packages", package)
        .config("spark.jars.ivy", str(ivy_home))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.stop()
    return sorted((ivy_home / "jars").glob("*.jar"))


def main() -> None:
    jars = pyspark_jars()
    package = f"org.apache.hadoop:hadoop-aws:{hadoop_version(jars)}"
    with tempfile.TemporaryDirectory() as ivy_home:
        resolved = resolve(package, Path(ivy_home))
        if not any("hadoop-aws" in p.name for p in resolved):
            raise SystemExit(f"{package} did not resolve; got {[p.name for p in resolved]}")
        for jar in resolved:
            shutil.copy2(jar, jars / jar.name)
            print(f"baked {jar.name}", file=sys.stderr)


if __name__ == "__main__":
    main()

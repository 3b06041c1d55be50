"""Where every dataset lives: the one module that names datasets and builds keys, URIs and paths.

Two object stores, each a local directory or an ``s3://bucket/prefix`` (MinIO or AWS, endpoint
from settings, credentials from the environment):
  * ``work``: raw drops, the lake, features, embeddings, indexes, staged run outputs, exports;
  * ``published``: the versioned recommendation tables downstream systems read.
``Storage`` is the catalogue: every dataset's key, format and write mode, and typed reads that
say which stage to run when a dataset is missing. Writes of single objects are atomic on both
stores (rename on local disk, one PUT on S3), which is what publish builds its pointer switch
on. Spark reaches the work store through ``spark_path`` (a local path or ``s3a://``; the Spark
side of the lake is ``recsys_lib.lake``).
Tests: tests/unit/recsys_lib/test_storage.py (local and a moto S3 server on loopback).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_lib.errors import MissingInput, SettingsError, StorageError
from recsys_lib.schema import CONTENT_HASH_COL, ENTITIES, ITEM_COL
from recsys_lib.settings import Settings, StorageSettings

STAGES_DIR = "stages"  # runs/ds=<ds>/stages/<stage>.json: each stage's seconds and summary
_TIMED_PART = re.compile(r"^part-(\d{20})-")  # an encoder-output part, named by its write time

if TYPE_CHECKING:
    import pandas as pd

    from recsys_lib.embedding import EncoderOutputs
    from recsys_lib.evaluation.report import EvaluationReport

PARQUET_SUFFIX = ".parquet"


class ObjectStore(ABC):
    """A flat key space under a root URI; keys use '/' separators and never start with '/'."""

    root: str

    def uri(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}" if key else self.root

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys of all objects under ``prefix`` (recursive), sorted."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object atomically: readers see the old object or the new one."""

    @abstractmethod
    def upload(self, local_path: str | Path, key: str) -> None: ...

    @abstractmethod
    def download(self, key: str, local_path: str | Path) -> None: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""

    @abstractmethod
    def replace_prefix(self, staged: str, prefix: str) -> None:
        """Make ``prefix`` hold exactly what ``staged`` holds (``staged`` is then gone)."""

    def check_reachable(self) -> None:
        """Raise StorageError where the store cannot be used (a local directory always can)."""
        return None

    @abstractmethod
    def spark_path(self, key: str) -> str:
        """The same location as Spark's Hadoop filesystem layer names it."""

    @abstractmethod
    def arrow_file(self, key: str):
        """(pyarrow filesystem, path) of ``key``, for readers that fetch only the byte ranges
        they need (Parquet footers and the row groups a filter selects)."""

    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate sub-folder names under ``prefix``."""
        prefix = prefix.rstrip("/") + "/"
        names = {k[len(prefix) :].split("/", 1)[0] for k in self.list(prefix) if "/" in k[len(prefix) :]}
        return sorted(names)

    # Parquet: tables are folders of part files, as Spark writes them.
    def write_table(self, key: str, table: pa.Table, part: int | str = 0, **parquet_options) -> str:
        """Write ``table`` as the part named ``part`` (a number, or a name of its own) under ``key``."""
        buf = io.BytesIO()
        pq.write_table(table, buf, **parquet_options)
        name = f"{part:05d}" if isinstance(part, int) else part
        part_key = f"{key.rstrip('/')}/part-{name}{PARQUET_SUFFIX}"
        self.write_bytes(part_key, buf.getvalue())
        return part_key

    def parquet_parts(self, key: str) -> list[str]:
        return [
            k
            for k in self.list(key.rstrip("/") + "/")
            if k.endswith(PARQUET_SUFFIX) and not os.path.basename(k).startswith(("_", "."))
        ]

    def read_table(self, key: str, columns: list[str] | None = None, filters=None) -> pa.Table:
        """Read every Parquet part under ``key`` into one table (``filters``: rows kept, as
        ``pyarrow.parquet.read_table`` takes them)."""
        parts = self.parquet_parts(key)
        if not parts:
            raise StorageError(f"no Parquet table at {self.uri(key)}")
        tables = [pq.read_table(self._parquet_source(p), columns=columns, filters=filters) for p in parts]
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

    def replace_table(self, key: str, table: pa.Table, **parquet_options) -> str:
        """Write ``table`` as the only part under ``key`` (reruns leave no stale parts)."""
        written = self.write_table(key, table, **parquet_options)
        for stale in self.parquet_parts(key):
            if stale != written:
                self.delete_prefix(stale)
        return written

    def table_exists(self, key: str) -> bool:
        return bool(self.parquet_parts(key))

    def _parquet_source(self, key: str):
        return pa.BufferReader(self.read_bytes(key))


class LocalStore(ObjectStore):
    def __init__(self, root: str | Path):
        self.root = str(Path(root).expanduser().resolve())
        if Path(self.root).exists() and not Path(self.root).is_dir():
            raise StorageError(f"{self.root}: a file, not a directory: a store's root must be a directory")

    def path(self, key: str) -> Path:
        return Path(self.root, key) if key else Path(self.root)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = Path(self.root)
        # A prefix may end mid-name ("versions/2016-"), as on S3: walk its folder and filter.
        folder = base / prefix if prefix.endswith("/") or not prefix else (base / prefix).parent
        if not folder.is_dir():
            return []
        keys = []
        for dirpath, _, files in os.walk(folder):
            for name in files:
                if ".tmp-" in name:
                    continue
                key = Path(dirpath, name).relative_to(base).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"not found: {self.uri(key)}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def upload(self, local_path: str | Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, target)

    def download(self, key: str, local_path: str | Path) -> None:
        if not self.exists(key):
            raise StorageError(f"not found: {self.uri(key)}")
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(key), local_path)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.path(key).unlink(missing_ok=True)
        # Remove folders left empty, deepest first.
        start = self.path(prefix)
        if start.is_dir():
            for dirpath, _, _ in sorted(os.walk(start), key=lambda t: -len(t[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        return len(keys)

    def replace_prefix(self, staged: str, prefix: str) -> None:
        # Two renames: the old folder is set aside before the new one takes its name.
        source, target = self.path(staged.rstrip("/")), self.path(prefix.rstrip("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
        if target.exists():
            os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)

    def spark_path(self, key: str) -> str:
        return str(self.path(key))

    def arrow_file(self, key: str):
        from pyarrow import fs

        return fs.LocalFileSystem(), str(self.path(key))

    def _parquet_source(self, key: str):
        return str(self.path(key))


class S3Store(ObjectStore):
    def __init__(
        self,
        root: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        max_attempts: int = 5,
        timeouts_s: tuple[float, float] = (10.0, 60.0),
    ):
        if not root.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {root}")
        self.root = root.rstrip("/")
        bucket_and_prefix = self.root[len("s3://") :]
        self.bucket, _, prefix = bucket_and_prefix.partition("/")
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.max_attempts = max_attempts
        self.timeouts_s = timeouts_s  # (connect, read), per attempt

    @cached_property
    def client(self):
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"} if self.endpoint_url else {},
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            connect_timeout=self.timeouts_s[0],
            read_timeout=self.timeouts_s[1],
        )
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys.extend(self._rel(obj["Key"]) for obj in page.get("Contents", []))
        return sorted(keys)

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise StorageError(f"not found: {self.uri(key)}") from None
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def upload(self, local_path: str | Path, key: str) -> None:
        self.client.upload_file(str(local_path), self.bucket, self._key(key))

    def download(self, key: str, local_path: str | Path) -> None:
        if not self.exists(key):
            raise StorageError(f"not found: {self.uri(key)}")
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._key(key), str(local_path))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def replace_prefix(self, staged: str, prefix: str) -> None:
        # S3 has no rename: server-side copies, then the staged objects go.
        staged, prefix = staged.rstrip("/") + "/", prefix.rstrip("/") + "/"
        self.delete_prefix(prefix)
        for key in self.list(staged):
            source = {"Bucket": self.bucket, "Key": self._key(key)}
            self.client.copy_object(Bucket=self.bucket, Key=self._key(prefix + key[len(staged) :]), CopySource=source)
        self.delete_prefix(staged)

    def spark_path(self, key: str) -> str:
        return "s3a://" + self.uri(key)[len("s3://") :]

    @cached_property
    def _arrow_fs(self):
        from urllib.parse import urlparse

        from pyarrow import fs

        options = {"region": self.region}
        if self.endpoint_url:
            url = urlparse(self.endpoint_url)
            options |= {"endpoint_override": url.netloc, "scheme": url.scheme or "https"}
        return fs.S3FileSystem(**options)

    def arrow_file(self, key: str):
        return self._arrow_fs, f"{self.bucket}/{self._key(key)}"

    def check_reachable(self) -> None:
        """Fail now, in one line, where the bucket cannot be used (no credentials, no server, no
        such bucket, no access), not at the end of a night's work."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            error = e.response.get("Error", {})
            code, message = error.get("Code"), error.get("Message") or "no reason given"
            missing = code in ("404", "NoSuchBucket", "NotFound")
            why = "no such bucket" if missing else f"the server answered {code} ({message})"
            raise StorageError(f"{self.root}: {why}") from None
        except BotoCoreError as e:
            raise StorageError(f"{self.root}: {e}") from None

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (for local S3 servers and first deployments)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)


def open_store(root: str, settings: StorageSettings) -> ObjectStore:
    if root.startswith("s3://"):
        return S3Store(
            root,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            max_attempts=settings.s3_max_attempts,
            timeouts_s=(settings.s3_connect_timeout_s, settings.s3_read_timeout_s),
        )
    if "://" in root and not root.startswith("file://"):
        raise SettingsError(f"unsupported storage root {root!r}: use a local path or s3://bucket/prefix")
    return LocalStore(root.removeprefix("file://"))


class FeatureTable(StrEnum):
    """The features stage's tables, under ``features/ds=<ds>/`` (jobs/features.py says what each holds)."""

    ITEM_DOCUMENTS = "item_documents"
    EVALUATION_DOCUMENTS = "evaluation_documents"
    SEARCH_PAIRS = "search_pairs"
    TOP_QUERIES = "top_queries"
    ITEM_STATS = "item_stats"
    USER_HISTORIES = "user_histories"
    SEGMENT_POPULARITY = "segment_popularity"
    INTERACTIONS_TRAIN = "interactions_train"
    INTERACTIONS_ALL = "interactions_all"
    INTERACTIONS_HOLDOUT = "interactions_holdout"
    TRAIN_USER_HISTORIES = "train_user_histories"
    COLD_ITEMS = "cold_items"
    INTERACTIONS_COLD = "interactions_cold"


class OutputTable(StrEnum):
    """The tables a run stages under ``runs/ds=<ds>/`` and publish makes live."""

    USER_TOPN = "user_topn"
    ITEM_SIMILAR = "item_similar"
    QUERY_TOPN = "query_topn"
    ITEM_VECTORS = "item_vectors"
    USER_VECTORS = "user_vectors"


class Storage:
    """Keys for every dataset of the pipeline, the stores they live in, and typed reads and writes."""

    INDEX_FILE = "items.faiss"
    INDEX_ID_MAP = "id_map"
    INDEX_MANIFEST = "manifest.json"
    EVALUATION_REPORT = "evaluation.json"
    EVALUATION_TABLE = "evaluation.txt"
    # Published store: versions/<version>/<table>/part-*.parquet, versions/<version>/_manifest.json,
    # and the pointer readers start from.
    LATEST = "latest.json"
    MANIFEST_FILE = "_manifest.json"
    # Files a version carries beside its tables: the query side of the model for search services.
    QUERY_ENCODER = "query_encoder"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.work = open_store(settings.storage.work_root, settings.storage)
        self.published = open_store(settings.storage.publish_root, settings.storage)

    # Work store keys. Every stage output is keyed by ds, so a rerun overwrites its own outputs.
    @staticmethod
    def raw(entity: str, ds: str) -> str:
        return f"raw/{entity}/ds={ds}"

    @staticmethod
    def lake(entity: str) -> str:
        return f"lake/{entity}"

    @staticmethod
    def lake_partition(entity: str, ds: str) -> str:
        return f"lake/{entity}/ds={ds}"

    @staticmethod
    def lake_staging(entity: str, ds: str) -> str:
        """Where ingest writes a partition before every entity of the drop has passed."""
        return f"staging/lake/{entity}/ds={ds}"

    @staticmethod
    def quarantine(entity: str, ds: str) -> str:
        return f"quarantine/{entity}/ds={ds}"

    @staticmethod
    def features_partition(ds: str) -> str:
        """Every feature table of ds."""
        return f"features/ds={ds}"

    @staticmethod
    def features(name: FeatureTable, ds: str) -> str:
        return f"{Storage.features_partition(ds)}/{FeatureTable(name)}"

    @staticmethod
    def features_split(ds: str) -> str:
        return f"{Storage.features_partition(ds)}/split.json"

    @staticmethod
    def item_embeddings(ds: str, model_version: str) -> str:
        return f"embeddings/ds={ds}/model_version={model_version}"

    @staticmethod
    def encoder_outputs(fingerprint: str) -> str:
        """The transformer's pooled outputs by content hash, for one encoder (kept across nights)."""
        return f"encoder_outputs/encoder={fingerprint}"

    @staticmethod
    def index(ds: str, model_version: str, name: str = "") -> str:
        return f"index/ds={ds}/model_version={model_version}/{name}".rstrip("/")

    @staticmethod
    def run_output(name: str, ds: str) -> str:
        """Staged outputs of one run (top-N tables, the evaluation) before publish."""
        return f"runs/ds={ds}/{name}"

    @staticmethod
    def user_topn_export(version: str) -> str:
        return f"exports/user_topn/{version}.jsonl"

    # Published store keys.
    PUBLISHED_VERSIONS = "versions"

    @staticmethod
    def published_version(version: str) -> str:
        return f"{Storage.PUBLISHED_VERSIONS}/{version}"

    @staticmethod
    def published_manifest(version: str) -> str:
        return f"{Storage.published_version(version)}/{Storage.MANIFEST_FILE}"

    @staticmethod
    def published_file(version: str, artefact: str, name: str) -> str:
        return f"{Storage.published_version(version)}/{artefact}/{name}"

    @staticmethod
    def published_part(version: str, table: OutputTable, part: int) -> str:
        return f"{Storage.published_version(version)}/{OutputTable(table)}/part-{part:05d}{PARQUET_SUFFIX}"

    def partitions(self, prefix: str) -> list[str]:
        """The ds values of ``prefix/ds=YYYY-MM-DD`` folders in the work store, sorted."""
        return sorted(d[len("ds=") :] for d in self.work.list_dirs(prefix) if d.startswith("ds="))

    def spark_path(self, key: str) -> str:
        return self.work.spark_path(key)

    # Raw drops.
    def replace_raw_drop(self, entity: str, ds: str, files: dict[str, bytes | Path]) -> list[str]:
        """Make ``files`` (name -> bytes, or a local file to upload) the whole raw drop of
        ``entity`` for ds (none: the drop has no such file); returns their URIs."""
        prefix = self.raw(entity, ds)
        self.work.delete_prefix(prefix + "/")
        for name, data in files.items():
            if isinstance(data, Path):
                self.work.upload(data, f"{prefix}/{name}")
            else:
                self.work.write_bytes(f"{prefix}/{name}", data)
        return [self.work.uri(f"{prefix}/{name}") for name in files]

    @contextmanager
    def trial_raw_drops(self, ds: str, files: dict[str, dict[str, Path]]) -> Iterator[dict[str, list[str]]]:
        """Make ``files`` (entity -> name -> local file) the raw drops of ds while the block
        runs, and keep them only if it succeeds: a run that fails leaves each earlier drop as it
        was, so the next run of ds (a scheduled one, say) does not read the rejected files. What
        the stages derive from the drop for ds is kept the same way: the lake partitions of ds
        (every later night's training reads them) and its features (``recsys show`` reads their
        titles), so a run refused in train leaves the lake as it found it. The quarantine keeps
        the failed run's rows: they say why it failed. Yields the landed URIs of each entity."""
        token = uuid.uuid4().hex
        set_aside: dict[str, str | None] = {}  # prefix -> where its earlier content waits (None: it had none)

        def put_aside(prefix: str, aside: str) -> None:
            set_aside[prefix] = None
            if self.work.list(prefix + "/"):
                set_aside[prefix] = aside
                self.work.replace_prefix(prefix, aside)

        try:
            uris = {}
            for entity, named in files.items():
                put_aside(self.raw(entity, ds), f"raw/{entity}/.replaced-{ds}-{token}")
                uris[entity] = self.replace_raw_drop(entity, ds, named)
            for derived in [*(self.lake_partition(entity, ds) for entity in ENTITIES), self.features_partition(ds)]:
                put_aside(derived, f"staging/replaced-{token}/{derived}")
            yield uris
        except BaseException:
            for prefix, aside in set_aside.items():
                self.work.delete_prefix(prefix + "/")
                if aside is not None:
                    self.work.replace_prefix(aside, prefix)
            raise
        for aside in set_aside.values():
            if aside is not None:
                self.work.delete_prefix(aside + "/")

    def raw_files(self, entity: str, ds: str) -> list[str]:
        """Keys of every file of the raw drop of ``entity`` for ds."""
        return self.work.list(self.raw(entity, ds) + "/")

    # Features.
    def read_features(self, name: FeatureTable, ds: str, columns: list[str] | None = None) -> "pd.DataFrame":
        key = self.features(name, ds)
        if not self.work.table_exists(key):
            raise MissingInput(f"no {name} features for {ds} at {self.work.uri(key)}: run the features stage first")
        return self.work.read_table(key, columns=columns).to_pandas()

    def write_split(self, ds: str, split: str) -> None:
        """The holdout split the features stage ran for ds (``features.split``, "auto" resolved)."""
        self.write_json(self.features_split(ds), {"split": split})

    def read_split(self, ds: str) -> str:
        """The split the features stage ran for ds. For features written before it was recorded:
        ``features.split`` where that names one, else "" (unknown, which any split matches)."""
        key = self.features_split(ds)
        if self.work.exists(key):
            return json.loads(self.work.read_bytes(key))["split"]
        return "" if self.settings.features.split == "auto" else self.settings.features.split

    # Item embeddings.
    def write_item_embeddings(self, ds: str, model_version: str, table: pa.Table) -> str:
        key = self.item_embeddings(ds, model_version)
        self.work.replace_table(key, table)
        return self.work.uri(key)

    def read_item_embeddings(self, ds: str, model_version: str) -> pa.Table:
        key = self.item_embeddings(ds, model_version)
        if not self.work.table_exists(key):
            raise MissingInput(f"no item embeddings at {self.work.uri(key)}: run the embed_items stage first")
        return self.work.read_table(key)

    # The encoder-output cache.
    def read_encoder_outputs(self, fingerprint: str, hashes=None) -> "EncoderOutputs | None":
        """The cached outputs of an encoder (``hashes``: only those, whatever the cache holds)."""
        from recsys_lib.embedding import EncoderOutputs

        key = self.encoder_outputs(fingerprint)
        if not self.work.table_exists(key) or (hashes is not None and not len(hashes)):
            return None
        filters = None if hashes is None else [(CONTENT_HASH_COL, "in", list(hashes))]
        table = self.work.read_table(key, filters=filters)
        return EncoderOutputs.from_table(table) if table.num_rows else None

    def add_encoder_outputs(self, fingerprint: str, table: pa.Table) -> None:
        """Append outputs as a new part (parts are never rewritten: readers keep the first row of
        a hash). Each part's name is its own (write time, then a random suffix): recommend and
        evaluate run side by side and add to the same cache, and numbered parts would let one
        overwrite the other's."""
        part = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self.work.write_table(self.encoder_outputs(fingerprint), table, part=part)

    def prune_work(self, ds: str, keep_days: int, now_ns: int | None = None) -> list[str]:
        """Delete what the stages derived for days more than ``keep_days`` before ds (features,
        item embeddings, indexes, staged tables and query encoders, exports: a rerun of such a
        day derives them again) and the encoder-output caches that no part was added to for
        ``keep_days`` days of wall-clock time (a cache belongs to an encoder, not to a day; one
        still in use is only encoded again). Kept at any age: raw drops, the lake and the
        quarantine (the data itself), and each day's run record (its evaluation, report and
        stage summaries: small, and the history of the runs). Returns the deleted prefixes."""
        cutoff = (dt.date.fromisoformat(ds) - dt.timedelta(days=keep_days)).isoformat()
        old = [
            f"{base}/ds={day}"
            for base in ("features", "embeddings", "index")
            for day in self.partitions(base)
            if day < cutoff
        ]
        for day in self.partitions("runs"):
            if day < cutoff:
                old += [f"runs/ds={day}/{name}" for name in self.work.list_dirs(f"runs/ds={day}") if name != STAGES_DIR]
        old += [
            f"exports/user_topn/{name}" for name in (os.path.basename(k) for k in self.work.list("exports/user_topn/"))
            if name[:10] < cutoff
        ]
        newest = (now_ns or time.time_ns()) - keep_days * 86_400 * 10**9
        for name in self.work.list_dirs("encoder_outputs"):
            parts = (os.path.basename(k) for k in self.work.parquet_parts(f"encoder_outputs/{name}"))
            written = [int(m[1]) for m in map(_TIMED_PART.search, parts) if m]
            if written and max(written) < newest:
                old.append(f"encoder_outputs/{name}")
        for prefix in old:
            self.work.delete_prefix(prefix if prefix.startswith("exports/") else prefix + "/")
        return old

    # The FAISS index: the index file, its id map (row -> item id) and its manifest.
    def write_index(self, ds: str, model_version: str, index, item_ids: list[str], manifest: dict[str, Any]) -> str:
        from recsys_lib.index import save_index

        with self.temp_dir() as tmp:
            path = f"{tmp}/{self.INDEX_FILE}"
            save_index(index, path)
            self.work.upload(path, self.index(ds, model_version, self.INDEX_FILE))
        self.work.replace_table(self.index(ds, model_version, self.INDEX_ID_MAP), pa.table({ITEM_COL: item_ids}))
        self.write_json(self.index(ds, model_version, self.INDEX_MANIFEST), manifest)
        return self.work.uri(self.index(ds, model_version))

    def read_index(self, ds: str, model_version: str):
        from recsys_lib.index import load_index

        key = self.index(ds, model_version, self.INDEX_FILE)
        if not self.work.exists(key):
            raise MissingInput(f"no item index at {self.work.uri(key)}: run the build_index stage first")
        with self.temp_dir() as tmp:
            path = f"{tmp}/{self.INDEX_FILE}"
            self.work.download(key, path)
            return load_index(path)

    def read_index_manifest(self, ds: str, model_version: str) -> dict[str, Any]:
        key = self.index(ds, model_version, self.INDEX_MANIFEST)
        if not self.work.exists(key):
            raise MissingInput(f"no index manifest at {self.work.uri(key)}: run the build_index stage first")
        return json.loads(self.work.read_bytes(key))

    # Staged output tables (user top-N, item-to-item).
    def write_output_table(self, name: OutputTable, ds: str, table: pa.Table) -> str:
        return self.work.replace_table(self.run_output(OutputTable(name), ds), table)

    def write_output_parts(self, ds: str, parts: Iterable[dict[OutputTable, pa.Table]]) -> int:
        """Write tables that are made together in parts (e.g. each part of users' top-N lists and
        vectors), one part at a time so memory stays one part; then delete the parts an earlier,
        larger run left behind. Returns the number of parts."""
        written: dict[str, set[str]] = {}
        n = 0
        for n, tables in enumerate(parts, start=1):
            for name, table in tables.items():
                key = self.run_output(OutputTable(name), ds)
                written.setdefault(key, set()).add(self.work.write_table(key, table, part=n - 1))
        for key, keys in written.items():
            for stale in set(self.work.parquet_parts(key)) - keys:
                self.work.delete_prefix(stale)
        return n

    def write_output_files(self, name: str, ds: str, files: dict[str, bytes]) -> str:
        """Stage a folder of files (an artefact such as the query encoder) for publish, replacing
        what an earlier run of ds staged under that name."""
        prefix = self.run_output(name, ds)
        self.work.delete_prefix(prefix + "/")
        for file, data in files.items():
            self.work.write_bytes(f"{prefix}/{file}", data)
        return self.work.uri(prefix)

    def read_output_files(self, name: str, ds: str) -> dict[str, bytes]:
        prefix = self.run_output(name, ds) + "/"
        keys = self.work.list(prefix)
        if not keys:
            raise MissingInput(f"no staged {name} at {self.work.uri(prefix)}: run the recommend stage first")
        return {key[len(prefix) :]: self.work.read_bytes(key) for key in keys}

    def read_output_table(self, name: OutputTable, ds: str) -> pa.Table:
        key = self.run_output(OutputTable(name), ds)
        if not self.work.table_exists(key):
            raise MissingInput(f"no staged {name} table at {self.work.uri(key)}: run the recommend stage first")
        return self.work.read_table(key)

    def output_uri(self, name: str, ds: str) -> str:
        return self.work.uri(self.run_output(name, ds))

    # The evaluation report: typed JSON for the gate, a text table for people.
    def write_evaluation(self, report: "EvaluationReport") -> str:
        self.write_json(self.run_output(self.EVALUATION_REPORT, report.ds), report.to_dict())
        table = f"{report.model_version}, ds {report.ds}\n\n{report.to_text()}\n"
        self.work.write_bytes(self.run_output(self.EVALUATION_TABLE, report.ds), table.encode())
        return self.work.uri(self.run_output(self.EVALUATION_TABLE, report.ds))

    def read_evaluation(self, ds: str) -> "EvaluationReport":
        from recsys_lib.evaluation.report import EvaluationReport

        key = self.run_output(self.EVALUATION_REPORT, ds)
        if not self.work.exists(key):
            raise MissingInput(f"no evaluation report at {self.work.uri(key)}: run the evaluate stage first")
        return EvaluationReport.from_dict(json.loads(self.work.read_bytes(key)))

    def evaluation_table(self, ds: str) -> str | None:
        """The evaluation as the text table evaluate printed, or None before evaluate ran."""
        key = self.run_output(self.EVALUATION_TABLE, ds)
        return self.work.read_bytes(key).decode() if self.work.exists(key) else None

    # Small files.
    def write_json(self, key: str, data: dict[str, Any]) -> None:
        self.work.write_bytes(key, json.dumps(data, indent=2, default=str).encode())

    def read_text(self, location: str) -> str:
        """A text file named by a path or URI in settings (e.g. ``rules.blocked_items_file``)."""
        return self.read_location(location).decode()

    def read_location(self, location: str) -> bytes:
        """A file named by a path or URI in settings (e.g. ``model.side_vectors``)."""
        parent, _, name = location.rstrip("/").rpartition("/")
        return open_store(parent or ".", self.settings.storage).read_bytes(name)

    # Local scratch: torch and FAISS need real files; caches are safe to delete.
    def scratch(self, *parts: str) -> Path:
        return scratch_dir(self.settings, *parts)

    def temp_dir(self) -> tempfile.TemporaryDirectory:
        return tempfile.TemporaryDirectory(dir=self.scratch("tmp"))


def scratch_dir(settings: Settings, *parts: str) -> Path:
    """A folder under ``<data_root>/scratch`` (caches, temporary files), created on first use."""
    path = Path(settings.data_root).joinpath("scratch", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

"""One typed settings object for the whole pipeline.

Layers, later wins:
  1. ``recsys_lib/conf/base.toml`` (committed defaults),
  2. ``recsys_lib/conf/<profile>.toml`` for each profile in ``RECSYS_PROFILE``, in order (``local``
     by default; ``cluster`` for the distributed deployment, ``cluster,gpu`` on a GPU worker),
  3. a TOML file named by ``RECSYS_CONFIG`` (or passed as ``config_file``),
  4. environment variables ``RECSYS__<SECTION>__<KEY>`` (e.g. ``RECSYS__TRAIN__MAX_STEPS=50``),
  5. explicit ``overrides`` (Airflow params, CLI flags).

``RECSYS_DATA_ROOT`` sets the one folder that holds all local state; strings may refer to it as
``{data_root}``. Secrets never live here: S3 and MLflow credentials come from the standard
environment variables (``AWS_ACCESS_KEY_ID``...) or Airflow connections.
Tests: tests/unit/recsys_lib/test_settings.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Mapping

from recsys_lib.errors import SettingsError

CONF_DIR = Path(__file__).resolve().parent / "conf"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "RECSYS__"


# Field meanings and defaults live in conf/base.toml, the one place that sets every key.
# Enum-like settings are Literal types: a value outside them is refused when settings load.
Device = Literal["auto", "cpu", "cuda"]
Split = Literal["auto", "user_chrono", "global_time", "random_item"]
IndexKind = Literal["auto", "flat", "hnsw", "ivfpq"]
BaselineName = Literal[
    "popularity", "item_knn", "ease", "als", "implicit_als", "implicit_bpr", "cornac_bpr", "cornac_bivae"
]


def _require(section: str, settings: Any, rule: str, test, names: tuple[str, ...]) -> None:
    """Refuse, when settings load, a value that would fail deep inside a stage or quietly do
    harm (``publish.keep_versions = 0`` deletes every version but the live one); NaN fails too."""
    for name in names:
        value = getattr(settings, name)
        if not test(value):
            raise SettingsError(f"{section}.{name} must be {rule}, got {value!r}")


def _positive_count(settings: Any, section: str, *names: str) -> None:
    _require(section, settings, "at least 1", lambda v: v >= 1, names)


def _count(settings: Any, section: str, *names: str) -> None:
    _require(section, settings, "0 or more", lambda v: v >= 0, names)


def _share(settings: Any, section: str, *names: str) -> None:
    _require(section, settings, "between 0 and 1", lambda v: 0 <= v <= 1, names)


def _iso_or_empty(value: str) -> bool:
    try:
        return not value or bool(datetime.fromisoformat(value))
    except ValueError:
        return False


@dataclass(frozen=True)
class StorageSettings:
    """Where data lives. Roots are local directories or ``s3://bucket/prefix`` URIs."""

    work_root: str
    publish_root: str
    s3_endpoint_url: str | None
    s3_region: str
    s3_max_attempts: int
    s3_connect_timeout_s: float
    s3_read_timeout_s: float

    def __post_init__(self):
        roots = ("work_root", "publish_root")
        _require("storage", self, "a directory or an s3:// URI", lambda v: bool(v.strip()), roots)


@dataclass(frozen=True)
class SparkSettings:
    master: str
    driver_memory: str
    shuffle_partitions: int
    conf: tuple[str, ...]


@dataclass(frozen=True)
class IngestSettings:
    max_reject_fraction: float
    require_known_items: bool
    encoding: str
    min_timestamp: str

    def __post_init__(self):
        _share(self, "ingest", "max_reject_fraction")
        _require("ingest", self, "an ISO-8601 date or time (e.g. 1990-01-01) or empty", _iso_or_empty,
                 ("min_timestamp",))  # fmt: skip


@dataclass(frozen=True)
class FeatureSettings:
    split: Split
    split_seed: int
    holdout_fraction: float
    min_time_split_users: int
    min_user_interactions: int
    min_training_users: int
    min_training_items: int
    max_history: int
    min_positive_rating: float | None
    event_weights: tuple[str, ...]  # "event_type=weight" entries
    max_tags_per_item: int
    cold_item_fraction: float
    cold_item_seed: int
    search_holdout_fraction: float
    search_holdout_seed: int
    top_queries: int

    def __post_init__(self):
        self.event_weight_map()  # refuse a malformed entry when settings load
        _require("features", self, "between 0 and 1, both excluded", lambda v: 0 < v < 1, ("holdout_fraction",))
        _share(self, "features", "cold_item_fraction", "search_holdout_fraction")
        _positive_count(self, "features", "min_user_interactions", "max_history")
        _count(self, "features", "min_time_split_users", "min_training_users", "min_training_items", "top_queries")

    def event_weight_map(self) -> dict[str, float]:
        """``event_weights`` as {event type: weight}; unlisted types weigh 1."""
        out = {}
        for entry in self.event_weights:
            name, sep, value = entry.partition("=")
            try:
                weight = float(value)
            except ValueError:
                weight = -1.0
            if not sep or not name.strip() or weight < 0:
                raise SettingsError(f"features.event_weights: expected event_type=weight (>= 0), got {entry!r}")
            out[name.strip()] = weight
        return out


@dataclass(frozen=True)
class ModelSettings:
    encoder: str
    max_length: int
    history_length: int
    user_layers: int
    side_vectors: str


@dataclass(frozen=True)
class TrainSettings:
    device: Device
    cpu_precision: Literal["auto", "fp32", "bf16"]
    seed: int
    batch_size: int
    encoder_batch_size: int
    extra_negatives: int
    frozen_steps: int
    max_steps: int
    refresh_every: int
    patience: int
    max_validation_users: int
    validation_items: int
    refresh_ranked_only: bool
    learning_rate: float
    head_learning_rate: float
    id_learning_rate: float
    weight_decay: float
    warmup_fraction: float
    temperature: float
    logq_correction: bool
    id_dropout: float
    text_loss_weight: float
    content_loss_weight: float
    search_loss_weight: float
    interests_loss_weight: float
    search_batch_size: int
    trainable_layers: int
    lora_rank: int
    refit_steps: int
    full_retrain: bool
    finetune_every_days: int
    profile_share: float

    def __post_init__(self):
        _positive_count(self, "train", "batch_size", "encoder_batch_size", "refresh_every", "patience",
                        "search_batch_size")  # fmt: skip
        _count(self, "train", "extra_negatives", "frozen_steps", "max_steps", "refit_steps", "max_validation_users",
               "validation_items", "finetune_every_days", "lora_rank")  # fmt: skip
        _share(self, "train", "id_dropout", "warmup_fraction", "profile_share")
        _require("train", self, "above 0", lambda v: v > 0, ("temperature", "learning_rate", "head_learning_rate",
                                                               "id_learning_rate"))  # fmt: skip
        _count(self, "train", "weight_decay", "text_loss_weight", "content_loss_weight", "search_loss_weight",
               "interests_loss_weight")  # fmt: skip


@dataclass(frozen=True)
class EmbedSettings:
    batch_size: int
    device: Device
    runtime: Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8"]
    onnx_dir: str
    engine: Literal["local", "spark"]


@dataclass(frozen=True)
class IndexSettings:
    kind: IndexKind
    recall_queries: int
    recall_k: int
    hnsw_m: int
    hnsw_ef_search: int
    ivf_nprobe: int


@dataclass(frozen=True)
class RecommendSettings:
    top_n: int
    similar_n: int
    user_batch_size: int
    users_per_part: int

    def __post_init__(self):
        for name in ("top_n", "similar_n", "user_batch_size", "users_per_part"):
            if getattr(self, name) < 1:
                raise SettingsError(f"recommend.{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class RankSettings:
    enabled: bool
    candidates: int
    recent_days: int
    rounds: int
    learning_rate: float
    num_leaves: int
    min_users: int
    validation_share: float
    knn_neighbours: int  # the item-kNN behind the knn_score feature (0: no such feature)
    ease_items: int  # the EASE behind the ease_score feature covers this many popular items (0: no such feature)
    ease_l2: float
    ease_candidates: int  # EASE's best this many unseen items join the retriever's candidates (0: none)
    prior_scale: float  # the trees correct the best of PRIORS' orders, weighed so (0: they start from nothing)


@dataclass(frozen=True)
class EvaluateSettings:
    k: tuple[int, ...]  # cut-offs; the first is the primary one (the gate, tuning, early stopping)
    seed: int
    tune_baselines: bool
    baselines: tuple[BaselineName, ...]
    max_users: int  # holdout users scored (a seeded sample above this; 0 = all)

    def __post_init__(self):
        if not self.k or min(self.k) < 1:
            raise SettingsError(f"evaluate.k must list cut-offs of at least 1, got {self.k!r}")
        if self.max_users < 0:
            raise SettingsError(f"evaluate.max_users must be 0 (all) or positive, got {self.max_users}")

    @property
    def primary_k(self) -> int:
        return self.k[0]


@dataclass(frozen=True)
class TrackingSettings:
    tracking_uri: str
    artifact_root: str | None
    experiment: str
    registered_model: str


@dataclass(frozen=True)
class RulesSettings:
    blocked_items: tuple[str, ...]
    blocked_items_file: str | None
    new_item_boost: float
    min_score: float | None
    max_per_category: int
    diversity: float
    fallback_by_segment: bool
    min_segment_users: int

    def __post_init__(self):
        _share(self, "rules", "diversity")
        _count(self, "rules", "max_per_category", "min_segment_users")
        _require("rules", self, "a finite number", math.isfinite, ("new_item_boost",))
        _require("rules", self, "a finite number or empty", lambda v: v is None or math.isfinite(v), ("min_score",))


@dataclass(frozen=True)
class AlertSettings:
    webhook_url: str
    timeout_s: float


@dataclass(frozen=True)
class PublishSettings:
    max_ndcg_drop: float
    force: bool
    backfill: bool
    keep_versions: int
    keep_work_days: int
    min_coverage: float
    max_coverage_drop: float
    min_overlap: float

    def __post_init__(self):
        _positive_count(self, "publish", "keep_versions", "keep_work_days")
        _share(self, "publish", "min_coverage", "max_coverage_drop", "min_overlap")
        # Negative: the candidate must beat the champion by that share.
        _require("publish", self, "at most 1", lambda v: v <= 1, ("max_ndcg_drop",))


@dataclass(frozen=True)
class Settings:
    data_root: str
    profile: str
    storage: StorageSettings
    spark: SparkSettings
    ingest: IngestSettings
    features: FeatureSettings
    model: ModelSettings
    train: TrainSettings
    embed: EmbedSettings
    index: IndexSettings
    recommend: RecommendSettings
    rank: RankSettings
    rules: RulesSettings
    evaluate: EvaluateSettings
    tracking: TrackingSettings
    publish: PublishSettings
    alerts: AlertSettings

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """Return a copy with dotted-key overrides applied, e.g. ``{"recommend.top_n": 10}``."""
        tree = dataclasses.asdict(self)
        for dotted, value in overrides.items():
            _set_dotted(tree, dotted, value)
        return _build(Settings, tree, "settings")


def default_data_root() -> str:
    return os.environ.get("RECSYS_DATA_ROOT") or str(PROJECT_ROOT / "var")


def load_settings(
    profile: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Load settings from the layers described in the module docstring."""
    env = os.environ if env is None else env
    profile = profile or env.get("RECSYS_PROFILE") or "local"
    tree: dict[str, Any] = {}
    _merge(tree, _read_toml(CONF_DIR / "base.toml"))
    for name in profile.split(","):
        profile_file = CONF_DIR / f"{name.strip()}.toml"
        if not profile_file.exists():
            known = sorted(p.stem for p in CONF_DIR.glob("*.toml") if p.stem != "base")
            raise SettingsError(f"unknown profile {name.strip()!r}; known profiles: {', '.join(known)}")
        _merge(tree, _read_toml(profile_file))
    config_file = config_file or env.get("RECSYS_CONFIG")
    if config_file:
        _merge(tree, _read_toml(Path(config_file)))
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            _set_dotted(tree, key[len(ENV_PREFIX) :].lower().replace("__", "."), value)
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    tree["profile"] = profile
    data_root = env.get("RECSYS_DATA_ROOT") or tree.get("data_root") or str(PROJECT_ROOT / "var")
    tree["data_root"] = str(Path(data_root).expanduser().resolve())
    _interpolate(tree, {"data_root": tree["data_root"]})
    return _build(Settings, tree, "settings")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"settings file not found: {path}") from None
    except IsADirectoryError:
        raise SettingsError(f"settings file {path} is a directory") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise SettingsError(f"{path}: {e}") from None


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SettingsError(f"{dotted}: {part} is not a section")
    node[leaf] = value


def _interpolate(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = _interpolate(value, values)
    elif isinstance(node, str):
        return node.replace("{data_root}", values["data_root"])
    elif isinstance(node, list):
        return [_interpolate(v, values) for v in node]
    return node


def _build(cls: type, tree: Mapping[str, Any], where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - names)
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    missing = sorted(names - set(tree))
    if missing:
        raise SettingsError(f"{where}: missing key(s) {', '.join(missing)} (base.toml must set every key)")
    kwargs = {}
    for name, value in tree.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Coerce TOML values and environment strings to the annotated field type."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise SettingsError(f"{where}: expected a section, got {value!r}")
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise SettingsError(f"{where}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or value == "" or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    raise SettingsError(f"{where}: unsupported type {tp}")

"""Loading what several stages share: feature tables, the model, the item vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage
from recsys_lib.tracking import CANDIDATE, ModelVersion, Tracker


def read_features(storage: Storage, name: str, ds: str, columns: list[str] | None = None) -> pd.DataFrame:
    return storage.work.read_table(Storage.features(name, ds), columns=columns).to_pandas()


def open_stage(settings: Settings, model_version: str | None) -> tuple[Storage, Tracker, ModelVersion]:
    """What every stage after train starts with: the stores, MLflow and the model version."""
    from recsys_lib.logs import quiet_library_logs

    quiet_library_logs()
    tracker = Tracker(settings)
    return Storage(settings), tracker, resolve_model(tracker, model_version)


def resolve_model(tracker: Tracker, model_version: str | None) -> ModelVersion:
    """The given registered version, or the current candidate when none is given."""
    if model_version is not None:
        return tracker.model_version(str(model_version))
    mv = tracker.alias(CANDIDATE)
    if mv is None:
        raise LookupError(f"no '{CANDIDATE}' version of model {tracker.model_name!r}: run the train stage first")
    return mv


def load_model(tracker: Tracker, mv: ModelVersion, device):
    from recsys_lib.models.two_tower import TwoTowerModel

    return TwoTowerModel.load(tracker.download_model(mv.version), device=device)


def read_item_vectors(storage: Storage, ds: str, mv: ModelVersion) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """(catalogue item ids in row order, [n, d] unit vectors, [n] item biases) of the embed stage."""
    from recsys_lib.embedding import vectors_of
    from recsys_lib.schema import BIAS_COL, ITEM_COL

    key = Storage.item_embeddings(ds, mv.version)
    if not storage.work.table_exists(key):
        raise FileNotFoundError(f"no item embeddings at {storage.work.uri(key)}: run embed_items first")
    table = storage.work.read_table(key)
    bias = table.column(BIAS_COL).to_numpy().astype(np.float32)
    return pd.Index(table.column(ITEM_COL).to_pylist()), vectors_of(table), bias


def to_indices(item_index: pd.Index, lists) -> list[np.ndarray]:
    """Map lists of item ids to catalogue indices, dropping ids outside the catalogue."""
    lists = list(lists)
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    flat = np.concatenate([np.asarray(x, dtype=object) for x in lists]) if lengths.sum() else np.empty(0, object)
    idx = item_index.get_indexer(flat).astype(np.int64) if len(flat) else np.empty(0, np.int64)
    return [part[part >= 0] for part in np.split(idx, np.cumsum(lengths)[:-1])] if lists else []


def business_rules(settings: Settings, storage: Storage, ds: str, item_index: pd.Index):
    """The ``[rules]`` settings resolved against the catalogue of ``ds``."""
    from recsys_lib.rules import load_rules
    from recsys_lib.schema import CATEGORIES_COL, ITEM_COL
    from recsys_lib.storage import open_store

    def read_text(location: str) -> str:
        parent, _, name = location.rstrip("/").rpartition("/")
        return open_store(parent or ".", settings.storage).read_bytes(name).decode()

    return load_rules(
        settings,
        item_index,
        read_features(storage, "item_stats", ds, columns=[ITEM_COL]),
        read_features(storage, "item_documents", ds, columns=[ITEM_COL, CATEGORIES_COL]),
        read_text,
    )

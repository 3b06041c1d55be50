"""Reading the published tables, for downstream systems that want more than plain Parquet.

    tables = PublishedTables.from_settings(load_settings())
    tables.recommendations_for("42")      # one user's ranked rows, as pandas
    tables.similar_items("318")
    tables.table("user_topn")             # the whole table as Arrow
    tables.search("space adventure", k=10, user_id="42")   # a text query, optionally personalised
    tables.for_session(["318", "296"], k=10)  # items for a history the nightly run has not seen

Every read resolves ``latest.json`` once per call, so a call sees one version, never a mix.
Tests: tests/unit/recsys_lib/test_reader.py, tests/integration.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_lib.embedding import ItemVectors, vectors_of
from recsys_lib.errors import NothingPublished, NotInVersion
from recsys_lib.publish import read_latest
from recsys_lib.schema import BIAS_COL, ITEM_COL, MODEL_VERSION_COL, RANK_COL, SCORE_COL, USER_COL, VECTOR_COL
from recsys_lib.settings import Settings
from recsys_lib.storage import ObjectStore, OutputTable, Storage, open_store

# How much a user's vector counts beside the query's in a personalised search (both unit
# vectors): the query decides what is relevant, the user's taste orders what matches it.
USER_WEIGHT = 0.5
PERSONALISED_COL = "personalised"


class PublishedTables:
    def __init__(self, store: ObjectStore, cache_dir: str | Path | None = None):
        self.store = store
        # Where a version's query encoder is downloaded to (once per version).
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "recsys-published")
        self._items: dict[str, ItemVectors] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> "PublishedTables":
        return cls(open_store(settings.storage.publish_root, settings.storage))

    def manifest(self, version: str | None = None) -> dict[str, Any]:
        if version is not None:
            import json

            return json.loads(self.store.read_bytes(Storage.published_manifest(version)))
        manifest = read_latest(self.store)
        if manifest is None:
            raise NothingPublished(f"nothing published yet at {self.store.uri('')}")
        return manifest

    def files(self, name: str, version: str | None = None) -> list[str]:
        """URIs of a table's Parquet files in the live (or given) version."""
        return [self.store.uri(f["key"]) for f in self.manifest(version)["tables"][name]["files"]]

    def table(self, name: str, version: str | None = None, filters=None, columns=None, key=None) -> pa.Table:
        """A table of the live (or given) version. ``key`` reads only the file whose key range
        holds it; ``filters`` skip row groups by their statistics, so one key's rows cost a
        footer and a row group, not the whole table."""
        manifest = self.manifest(version)
        files = manifest["tables"][name]["files"]
        if key is not None:
            files = [f for f in files if f.get("min_key") is None or f["min_key"] <= key <= f["max_key"]] or files[:1]
        parts = []
        for f in files:
            filesystem, path = self.store.arrow_file(f["key"])
            parts.append(pq.read_table(path, filesystem=filesystem, filters=filters, columns=columns))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def recommendations_for(self, user_id: str, version: str | None = None) -> pd.DataFrame:
        user_id = str(user_id)
        filters = [(USER_COL, "=", user_id)]
        rows = self.table(OutputTable.USER_TOPN, version, filters=filters, key=user_id).to_pandas()
        return rows.sort_values(RANK_COL).reset_index(drop=True)

    def similar_items(self, item_id: str, version: str | None = None) -> pd.DataFrame:
        item_id = str(item_id)
        filters = [(ITEM_COL, "=", item_id)]
        rows = self.table(OutputTable.ITEM_SIMILAR, version, filters=filters, key=item_id).to_pandas()
        return rows.sort_values(RANK_COL).reset_index(drop=True)

    def query_encoder(self, version: str | None = None):
        """The version's query encoder (``recsys_lib.models.inference.QueryEncoder``): its files
        are downloaded once per version and checked against the manifest's checksums."""
        from recsys_lib.models.inference import QueryEncoder

        manifest = self.manifest(version)
        listed = manifest.get("artefacts", {}).get(Storage.QUERY_ENCODER)
        if not listed:
            raise NothingPublished(
                f"version {manifest['version']} has no query encoder (published before search existed); "
                "the next run publishes one"
            )
        folder = self.cache_dir / manifest["version"] / Storage.QUERY_ENCODER
        done = folder / ".complete"
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            for f in listed["files"]:
                data = self.store.read_bytes(f["key"])
                if hashlib.sha256(data).hexdigest() != f["sha256"]:
                    raise NothingPublished(f"{self.store.uri(f['key'])} does not match its checksum in the manifest")
                (folder / Path(f["key"]).name).write_bytes(data)
            done.touch()
        return QueryEncoder(folder)

    def search(self, text: str, k: int = 10, user_id: str | None = None, version: str | None = None) -> pd.DataFrame:
        """The ``k`` items nearest a text query, from the live (or given) version, as the
        pipeline's model places them. With ``user_id``, the user's vector is blended in
        (query + USER_WEIGHT x user, both unit vectors): among items that match the query, the
        ones the user would pick come first; a user without a vector gets the plain search."""
        _check_k(k)
        if not text.strip():
            raise ValueError("the query is empty: search needs some text")
        manifest = self.manifest(version)
        version = manifest["version"]
        query = self.query_encoder(version).encode([text])[0]
        personalised = False
        if user_id is not None:
            user_id = str(user_id)
            users = self.table(OutputTable.USER_VECTORS, version, filters=[(USER_COL, "=", user_id)], key=user_id)
            if users.num_rows:
                # Published user vectors are the model's queries (unit vector / temperature).
                user = vectors_of(users)[0]
                query = query + USER_WEIGHT * user / max(float(np.linalg.norm(user)), 1e-12)
                query, personalised = query / np.linalg.norm(query), True
        items = self._item_vectors(version)
        scores = items.vectors @ query
        top = np.argsort(-scores, kind="stable")[:k]
        return pd.DataFrame({
            RANK_COL: np.arange(1, len(top) + 1), ITEM_COL: items.ids.to_numpy()[top], SCORE_COL: scores[top],
            MODEL_VERSION_COL: manifest["model_version"], PERSONALISED_COL: personalised,
        })  # fmt: skip

    def for_session(self, item_ids: list[str], k: int = 10, version: str | None = None) -> pd.DataFrame:
        """The ``k`` items for a history the nightly run has not seen (a session, a user who
        arrived after it) from the published vectors alone: the user is the mean of those items'
        vectors, scored as ``user_topn`` scores a user (cosine / temperature + item bias), the
        given items left out. Brand-new items take part by their text, as they do in the
        nightly lists (the cold-item table's ``item_vectors`` row measures this reading)."""
        from recsys_lib.retrieval import profile_scores

        _check_k(k)
        manifest = self.manifest(version)
        version = manifest["version"]
        temperature = manifest.get("temperature")
        if temperature is None:
            raise NothingPublished(f"version {version} has no temperature (published by an older release); "
                                   "the next run publishes one")  # fmt: skip
        items = self._item_vectors(version)
        history = items.ids.get_indexer([str(i) for i in item_ids])
        history = history[history >= 0]
        if not len(history):
            raise NotInVersion(f"none of the {len(item_ids)} items is in version {version}'s item_vectors")
        scores = profile_scores(items, temperature, [history], np.arange(len(items)))[0]
        scores[history] = -np.inf
        top = np.argsort(-scores, kind="stable")[: min(k, len(items) - len(np.unique(history)))]
        return pd.DataFrame({
            RANK_COL: np.arange(1, len(top) + 1), ITEM_COL: items.ids.to_numpy()[top], SCORE_COL: scores[top],
            MODEL_VERSION_COL: manifest["model_version"],
        })  # fmt: skip

    def known_items(self, item_ids: list[str], version: str | None = None) -> list[str]:
        """Those of ``item_ids`` that the version's ``item_vectors`` hold (``for_session`` leaves
        the others out)."""
        items = self._item_vectors(self.manifest(version)["version"])
        return [str(i) for i in item_ids if str(i) in items.ids]

    def _item_vectors(self, version: str) -> ItemVectors:
        if version not in self._items:
            table = self.table(OutputTable.ITEM_VECTORS, version, columns=[ITEM_COL, VECTOR_COL, BIAS_COL])
            self._items = {version: ItemVectors.from_table(table)}
        return self._items[version]


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k is how many items to return, at least 1; got {k}")

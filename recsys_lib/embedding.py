"""Bulk item embedding with reuse, and the item vectors every later stage reads.

An item whose document hash is unchanged under the same model version keeps its vector, so a
nightly run only encodes new and edited items. ``ItemVectors`` is the embed stage's product in
memory: catalogue ids in row order, unit vectors and item biases.
Tests: tests/unit/recsys_lib/test_embedding.py (incremental == full re-embedding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys_lib.schema import (
    BIAS_COL,
    CONTENT_HASH_COL,
    DOCUMENT_COL,
    ITEM_COL,
    ITEM_EMBEDDINGS_SCHEMA,
    MODEL_VERSION_COL,
    VECTOR_COL,
)


@dataclass(frozen=True)
class ItemVectors:
    """One model version's vectors for the catalogue of a ds."""

    ids: pd.Index  # catalogue item ids; position = the item's catalogue index
    vectors: np.ndarray  # [n, d] float32 unit vectors
    bias: np.ndarray  # [n] float32 item biases (a popularity prior on the logit scale)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_table(cls, table: pa.Table) -> "ItemVectors":
        """From an embeddings table (``ITEM_EMBEDDINGS_SCHEMA``), in its row order."""
        bias = table.column(BIAS_COL).to_numpy().astype(np.float32)
        return cls(pd.Index(table.column(ITEM_COL).to_pylist(), dtype=object), vectors_of(table), bias)

    def indices(self, lists) -> list[np.ndarray]:
        """Lists of item ids as lists of catalogue indices; ids outside the catalogue are dropped."""
        return catalogue_indices(self.ids, lists)

    def subset(self, rows: np.ndarray) -> "ItemVectors":
        return ItemVectors(self.ids[rows], self.vectors[rows], self.bias[rows])


def catalogue_indices(item_index: pd.Index, lists) -> list[np.ndarray]:
    """Map lists of item ids to catalogue indices (positions in ``item_index``), dropping ids
    outside the catalogue. One vectorised lookup for all lists, not one per list."""
    lists = list(lists)
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    flat = np.concatenate([np.asarray(x, dtype=object) for x in lists]) if lengths.sum() else np.empty(0, object)
    idx = item_index.get_indexer(flat).astype(np.int64) if len(flat) else np.empty(0, np.int64)
    return [part[part >= 0] for part in np.split(idx, np.cumsum(lengths)[:-1])] if lists else []


def embed_catalogue(
    model,
    tokenizer,
    documents: pd.DataFrame,
    model_version: str,
    batch_size: int,
    device,
    previous: pd.DataFrame | None = None,
) -> tuple[pa.Table, dict[str, int]]:
    """Vectors for every document, reusing ``previous`` rows of the same model and content hash.

    Args:
        model: a ``TwoTowerModel``; tokenizer: its tokenizer.
        documents: item_id, document, content_hash.
        previous: an earlier embeddings table (item_id, vector, bias, content_hash, model_version).
    Returns:
        (embeddings table in ITEM_EMBEDDINGS_SCHEMA ordered like ``documents``,
         {"embedded": n, "reused": m}).
    """
    from recsys_lib.models.two_tower import TokenizedDocuments, embed_documents

    reuse: dict[tuple[str, str], tuple[np.ndarray, float]] = {}
    if previous is not None and len(previous):
        same = previous[previous[MODEL_VERSION_COL] == model_version]
        reuse = {
            (i, h): (v, b)
            for i, h, v, b in zip(same[ITEM_COL], same[CONTENT_HASH_COL], same[VECTOR_COL], same[BIAS_COL])
        }
    keys = list(zip(documents[ITEM_COL], documents[CONTENT_HASH_COL]))
    todo = [n for n, key in enumerate(keys) if key not in reuse]
    vectors = np.zeros((len(documents), model.config.dim), dtype=np.float32)
    bias = np.zeros(len(documents), dtype=np.float32)
    if todo:
        texts = documents[DOCUMENT_COL].iloc[todo].tolist()
        docs = TokenizedDocuments.from_texts(tokenizer, texts, model.config.max_length)
        id_rows = model.id_rows(documents[ITEM_COL].iloc[todo])
        v, b = embed_documents(model, docs, batch_size, device, id_rows)
        vectors[todo], bias[todo] = v.cpu().numpy(), b.cpu().numpy()
    for n, key in enumerate(keys):
        if key in reuse:
            vectors[n], bias[n] = reuse[key]
    table = embeddings_table(
        documents[ITEM_COL].tolist(), vectors, bias, documents[CONTENT_HASH_COL].tolist(), model_version
    )
    return table, {"embedded": len(todo), "reused": len(documents) - len(todo)}


def embeddings_table(
    item_ids: list[str], vectors: np.ndarray, bias: np.ndarray, hashes: list[str], model_version: str
) -> pa.Table:
    flat = pa.array(vectors.astype(np.float32, copy=False).ravel())
    lists = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32()))
    return pa.table(
        [
            pa.array(item_ids, pa.string()),
            lists,
            pa.array(bias, pa.float32()),
            pa.array(hashes, pa.string()),
            pa.array([model_version] * len(item_ids), pa.string()),
        ],
        schema=ITEM_EMBEDDINGS_SCHEMA,
    )


def vectors_of(table: pa.Table) -> np.ndarray:
    """The [n, d] float32 matrix of an embeddings table, in row order."""
    column = table.column(VECTOR_COL).combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    dim = len(column[0])
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), dim)


def embed_version(storage, ds: str, model, tokenizer, model_version: str, cfg, device) -> tuple[ItemVectors, dict]:
    """Embed the catalogue of ds with one model version, reusing that version's latest earlier
    vectors, and store the table. Shared by the embed stage and by evaluate, which re-embeds the
    champion on today's catalogue.

    Args:
        storage: a ``Storage``; cfg: ``EmbedSettings``.
    Returns:
        (the vectors, {"items", "embedded", "reused", "embeddings": URI}).
    """
    from recsys_lib.storage import FeatureTable

    documents = storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds).sort_values(ITEM_COL, kind="stable")
    table, counts = embed_catalogue(
        model,
        tokenizer,
        documents.reset_index(drop=True),
        model_version,
        cfg.batch_size,
        device,
        previous=storage.latest_item_embeddings(ds, model_version),
    )
    uri = storage.write_item_embeddings(ds, model_version, table)
    return ItemVectors.from_table(table), {"items": len(documents), **counts, "embeddings": uri}

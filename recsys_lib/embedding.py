"""Bulk item embedding with reuse: an item whose document hash is unchanged under the same model
version keeps its vector, so a nightly run only encodes new and edited items.

Tests: tests/unit/test_embedding.py (incremental == full re-embedding).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys_lib.models.two_tower import TokenizedDocuments, TwoTowerModel, embed_documents
from recsys_lib.schema import (
    BIAS_COL,
    CONTENT_HASH_COL,
    DOCUMENT_COL,
    ITEM_COL,
    ITEM_EMBEDDINGS_SCHEMA,
    MODEL_VERSION_COL,
    VECTOR_COL,
)


def embed_catalogue(
    model: TwoTowerModel,
    tokenizer,
    documents: pd.DataFrame,
    model_version: str,
    batch_size: int,
    device,
    previous: pd.DataFrame | None = None,
) -> tuple[pa.Table, dict[str, int]]:
    """Vectors for every document, reusing ``previous`` rows of the same model and content hash.

    Args:
        documents: item_id, document, content_hash.
        previous: an earlier embeddings table (item_id, vector, bias, content_hash, model_version).
    Returns:
        (embeddings table in ITEM_EMBEDDINGS_SCHEMA ordered like ``documents``,
         {"embedded": n, "reused": m}).
    """
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

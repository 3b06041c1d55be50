"""Bulk item embedding through a cache of the transformer's outputs, and the item vectors every
later stage reads.

The transformer (the expensive part of the item tower) runs once per (content hash, encoder
fingerprint): ``EncoderOutputs`` are kept in the work store across nights, so a night only
encodes new and edited items, and models that share an encoder (a night's evaluation model
and its served continuation) share every output. ``ItemVectors`` is the embed stage's product
in memory: catalogue ids in row order, unit vectors and item biases.
Tests: tests/unit/recsys_lib/test_embedding.py (cached == fully re-encoded).
"""

from __future__ import annotations

import hashlib
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
    POOLED_COL,
    VECTOR_COL,
)

ENCODER_OUTPUTS_SCHEMA = pa.schema(
    [
        pa.field(CONTENT_HASH_COL, pa.string(), nullable=False),
        pa.field(POOLED_COL, pa.list_(pa.float32()), nullable=False),
    ]
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


@dataclass(frozen=True)
class EncoderOutputs:
    """The transformer's pooled outputs of documents, by content hash, for one encoder."""

    hashes: pd.Index  # content hashes, unique
    pooled: np.ndarray  # [n, d] float32

    def __len__(self) -> int:
        return len(self.hashes)

    @classmethod
    def empty(cls, dim: int) -> "EncoderOutputs":
        return cls(pd.Index([], dtype=object), np.zeros((0, dim), np.float32))

    @classmethod
    def from_table(cls, table: pa.Table) -> "EncoderOutputs":
        hashes = pd.Index(table.column(CONTENT_HASH_COL).to_pylist(), dtype=object)
        return cls(hashes, _matrix(table.column(POOLED_COL))).unique()

    def to_table(self) -> pa.Table:
        return pa.table([pa.array(self.hashes, pa.string()), vector_column(self.pooled)], schema=ENCODER_OUTPUTS_SCHEMA)

    def rows(self, hashes) -> np.ndarray:
        """Row of each hash in ``pooled``, -1 where it has none."""
        return self.hashes.get_indexer(pd.Index(hashes, dtype=object)) if len(self) else np.full(len(hashes), -1)

    def concat(self, other: "EncoderOutputs") -> "EncoderOutputs":
        """These outputs, then ``other``'s (a hash in both keeps the first)."""
        hashes = pd.Index(self.hashes.append(other.hashes), dtype=object)
        return EncoderOutputs(hashes, np.concatenate([self.pooled, other.pooled])).unique()

    def unique(self) -> "EncoderOutputs":
        keep = ~self.hashes.duplicated()
        return self if keep.all() else EncoderOutputs(self.hashes[keep], self.pooled[keep])


def catalogue_indices(item_index: pd.Index, lists) -> list[np.ndarray]:
    """Map lists of item ids to catalogue indices (positions in ``item_index``), dropping ids
    outside the catalogue. One vectorised lookup for all lists, not one per list."""
    lists = list(lists)
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    flat = np.concatenate([np.asarray(x, dtype=object) for x in lists]) if lengths.sum() else np.empty(0, object)
    idx = item_index.get_indexer(flat).astype(np.int64) if len(flat) else np.empty(0, np.int64)
    return [part[part >= 0] for part in np.split(idx, np.cumsum(lengths)[:-1])] if lists else []


def pooled_outputs(
    model, tokenizer, documents: pd.DataFrame, batch_size: int, device, cached: EncoderOutputs | None = None, pool=None
) -> tuple[np.ndarray, EncoderOutputs]:
    """The transformer's pooled outputs [n, d] of every document; it runs only for the content
    hashes ``cached`` lacks. Returns (the outputs in ``documents`` order, those computed now).

    Args:
        documents: item_id, document, content_hash.
        cached: earlier pooled outputs of this model's encoder.
        pool: texts -> [n, d] pooled outputs, for a runtime other than the model's fp32 torch
            encoder on ``device`` (or for Spark executors); called only if something is not cached.
    """
    from recsys_lib.models.two_tower import TokenizedDocuments, embed_text

    hashes = documents[CONTENT_HASH_COL].to_numpy(dtype=object)
    cached = cached if cached is not None else EncoderOutputs.empty(model.config.dim)
    rows = cached.rows(hashes)
    todo = np.flatnonzero(rows < 0)
    pooled = np.zeros((len(documents), model.config.dim), dtype=np.float32)
    pooled[rows >= 0] = cached.pooled[rows[rows >= 0]]
    computed = EncoderOutputs.empty(model.config.dim)
    if len(todo):
        # A text that repeats (users' words often do) goes through the transformer once.
        codes, todo_hashes = pd.factorize(hashes[todo])
        first = todo[np.unique(codes, return_index=True)[1]]
        texts = documents[DOCUMENT_COL].iloc[first].tolist()
        if pool is not None:
            fresh = pool(texts)
        else:
            docs = TokenizedDocuments.from_texts(tokenizer, texts, model.config.max_length)
            fresh = embed_text(model, docs, batch_size, device, pooled=True).cpu().numpy()
        pooled[todo] = fresh[codes]
        computed = EncoderOutputs(pd.Index(todo_hashes, dtype=object), fresh)
    return pooled, computed


def embed_catalogue(
    model,
    tokenizer,
    documents: pd.DataFrame,
    batch_size: int,
    device,
    cached: EncoderOutputs | None = None,
    pool=None,
    side: np.ndarray | None = None,
) -> tuple[ItemVectors, EncoderOutputs]:
    """Vectors for every document; the transformer runs only for content hashes ``cached`` lacks.

    The transformer's pooled output depends on the text and the encoder alone, so it is cached
    per (content hash, encoder fingerprint); the rest of the item tower (projection, ID
    embedding, bias) is cheap and applied to every item. Arguments as ``pooled_outputs``'s;
    ``model`` is a ``TwoTowerModel``, ``documents`` in catalogue order, ``side`` the items' side
    vectors in that order (for a model that takes them).
    Returns:
        (the item vectors in ``documents`` order, the pooled outputs computed now).
    """
    import torch

    pooled, computed = pooled_outputs(model, tokenizer, documents, batch_size, device, cached, pool)
    id_rows = torch.as_tensor(model.id_rows(documents[ITEM_COL]))
    side = None if side is None else torch.from_numpy(side)
    vectors, bias = model.items_from_pooled(torch.from_numpy(pooled), id_rows, side)
    items = ItemVectors(pd.Index(documents[ITEM_COL], dtype=object), vectors.numpy(), bias.numpy())
    return items, computed


def embeddings_table(
    item_ids: list[str], vectors: np.ndarray, bias: np.ndarray, hashes: list[str], model_version: str
) -> pa.Table:
    return pa.table(
        [
            pa.array(item_ids, pa.string()),
            vector_column(vectors),
            pa.array(bias, pa.float32()),
            pa.array(hashes, pa.string()),
            pa.array([model_version] * len(item_ids), pa.string()),
        ],
        schema=ITEM_EMBEDDINGS_SCHEMA,
    )


def vectors_of(table: pa.Table) -> np.ndarray:
    """The [n, d] float32 matrix of an embeddings table, in row order."""
    return _matrix(table.column(VECTOR_COL))


def _matrix(column) -> np.ndarray:
    column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    dim = len(column[0])
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), dim)


def vector_column(matrix: np.ndarray) -> pa.Array:
    """An [n, d] matrix as a list<float32> column of n rows (how every vector table stores them)."""
    flat = pa.array(matrix.astype(np.float32, copy=False).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1]).cast(pa.list_(pa.float32()))


def encoder_pooler(model, runtime: str, cfg, device):
    """``TokenizedDocuments`` -> pooled transformer outputs [n, d] in ``runtime`` (see
    ``embed.runtime``); cfg: ``EmbedSettings``."""
    from recsys_lib.models.inference import ONNX_RUNTIMES, onnx_pooler
    from recsys_lib.models.two_tower import embed_text

    if runtime in ONNX_RUNTIMES:
        pooler = onnx_pooler(model, runtime, cfg.onnx_dir)
        return lambda docs: pooler.pool(docs, cfg.batch_size)
    bf16 = runtime == "torch-bf16"
    return lambda docs: embed_text(model, docs, cfg.batch_size, device, pooled=True, cpu_bf16=bf16).cpu().numpy()


def text_pool(model, tokenizer, runtime: str, cfg, device):
    """texts -> pooled transformer outputs [n, d] in ``runtime``, for ``pooled_outputs``; None for
    fp32 torch, ``pooled_outputs``'s own path. cfg: ``EmbedSettings``."""
    from recsys_lib.models.two_tower import TokenizedDocuments

    if runtime == "torch":
        return None
    local = encoder_pooler(model, runtime, cfg, device)

    def pool(texts: list[str]) -> np.ndarray:
        return local(TokenizedDocuments.from_texts(tokenizer, texts, model.config.max_length))

    return pool


def text_hashes(texts: list[str]) -> list[str]:
    """Content hashes of texts as the features stage hashes documents: SHA-256 of the UTF-8 text, hex."""
    return [hashlib.sha256(text.encode("utf-8")).hexdigest() for text in texts]


class CachedTexts:
    """Texts -> the transformer's pooled outputs [n, d], through a cache of their own beside the
    documents' (``<encoder key>-texts``): the words users say they like go through the
    transformer once per (text, encoder), however many stages and nights read them. Before, a
    frozen night's evaluation at 100k users encoded 25,000 of them again in fp32, 2.1 of its 5.9
    minutes. ``runtime`` as ``embed.runtime`` (``cfg``: ``EmbedSettings``) resolves on ``device``."""

    def __init__(self, storage, model, tokenizer, cfg, device):
        from recsys_lib.models.inference import cache_key, resolve_runtime

        self.runtime = resolve_runtime(cfg.runtime, device)
        self.key = cache_key(model.encoder_fingerprint(), self.runtime) + "-texts"
        self.storage, self.model, self.tokenizer, self.cfg, self.device = storage, model, tokenizer, cfg, device
        self.pool = None if self.runtime == "torch" else self._pool  # None: pooled_outputs' own fp32 path
        self.pooler = None
        self.known = EncoderOutputs.empty(model.config.dim)  # what this object has read or computed

    def _pool(self, texts: list[str]) -> np.ndarray:
        if self.pooler is None:  # built on first need (an ONNX runtime exports the model): all may be cached
            self.pooler = text_pool(self.model, self.tokenizer, self.runtime, self.cfg, self.device)
        return self.pooler(texts)

    def __call__(self, texts: list[str]) -> np.ndarray:
        hashes = text_hashes(texts)
        wanted = pd.Index(hashes, dtype=object).unique()
        # Only these texts' rows are read: the cache also holds every typed interest recommend saw.
        stored = self.storage.read_encoder_outputs(self.key, wanted[self.known.rows(wanted) < 0])
        if stored is not None:
            self.known = self.known.concat(stored)
        frame = pd.DataFrame({DOCUMENT_COL: list(texts), CONTENT_HASH_COL: hashes})
        pooled, computed = pooled_outputs(self.model, self.tokenizer, frame, self.cfg.batch_size, self.device,
                                          self.known, self.pool)  # fmt: skip
        if len(computed):
            self.storage.add_encoder_outputs(self.key, computed.to_table())
            self.known = self.known.concat(computed)
        return pooled


def embed_version(
    storage, ds: str, model, tokenizer, model_version: str, cfg, device, write: bool = True, table=None, encoder=None
) -> tuple[ItemVectors, dict]:
    """Embed the catalogue of ds with one model, through the encoder-output cache of its
    encoder, and (``write``) store the vectors as that version's embeddings of ds. Shared by the
    embed stage and by evaluate, which embeds the evaluation models of the candidate and the
    champion.

    Args:
        storage: a ``Storage``; cfg: ``EmbedSettings``.
        table: the features table of documents (default ``item_documents``; evaluate embeds an
            evaluation model's ``evaluation_documents``).
        encoder: ``runtime`` -> (texts -> pooled outputs) for a transformer pass elsewhere
            (``spark_embedding.SparkEncoder`` on Spark executors); default: in this process.
    Returns:
        (the vectors, {"items", "encoded", "cached", "runtime", "embeddings": URI or None}).
    """
    from recsys_lib.models.inference import cache_key, resolve_runtime
    from recsys_lib.storage import FeatureTable

    table = FeatureTable.ITEM_DOCUMENTS if table is None else table
    documents = storage.read_features(table, ds).sort_values(ITEM_COL, kind="stable")
    documents = documents.reset_index(drop=True)
    runtime = resolve_runtime(cfg.runtime, device)
    key = cache_key(model.encoder_fingerprint(), runtime)
    cached = storage.read_encoder_outputs(key)
    pool = encoder(runtime) if encoder is not None else text_pool(model, tokenizer, runtime, cfg, device)
    side = None
    if model.config.side_dim:
        from recsys_lib.side_vectors import read_side_vectors

        side = read_side_vectors(storage, pd.Index(documents[ITEM_COL], dtype=object), ds, model.config.side_dim)
    items, computed = embed_catalogue(model, tokenizer, documents, cfg.batch_size, device, cached, pool, side)
    if len(computed):
        storage.add_encoder_outputs(key, computed.to_table())
    uri = None
    if write:
        table = embeddings_table(list(items.ids), items.vectors, items.bias, documents[CONTENT_HASH_COL].tolist(),
                                 model_version)  # fmt: skip
        uri = storage.write_item_embeddings(ds, model_version, table)
    encoded = int(documents[CONTENT_HASH_COL].isin(computed.hashes).sum())
    summary = {"items": len(items), "encoded": encoded, "cached": len(items) - encoded, "runtime": runtime}
    return items, {**summary, "embeddings": uri}

"""The training objective around a ``TwoTowerModel``: ``forward(batch)`` returns the losses.

A step scores a batch of users against the batch's own next items plus uniformly drawn extra
negatives. Every item's vector comes from a cache of the transformer's pooled outputs (refreshed
by ``refresh``), put through the item tower's heads with gradients, plus the item's ID embedding
(hidden at random: ID dropout, so text alone learns to place an item). While the transformer is
fine-tuned, the batch's first ``encoded`` next items go through it with gradients, and it learns
from a softmax among those items only: against the cached negatives it would receive the pull of
each positive toward its user but none of the pushes away, and all item vectors would drift
toward the average user.
A content term (``train.content_loss_weight``) ranks the next item's text-only vector for the
plain mean of the history's item vectors, so that the item vectors work without the user tower:
a reader of the published vectors builds users that way, and brand-new items must land among them.
Text pairs teach the text path a query takes at serving time (the item tower's text vector) to
land on items: "search" pairs (tags and categories as pseudo-queries, or a search log's clicks)
on the items they describe, ranked by cosine as search ranks; "interests" pairs (the words that
describe a user's history) on that user's items, scored as a user's list is (cosine / T + the
item bias), the path of a new user who says what they like.
Tests: tests/unit/recsys_lib/models/test_train_task.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from recsys_lib.models.inference import cpu_bf16
from recsys_lib.models.two_tower import (
    NO_ID,
    PAD,
    TokenizedDocuments,
    TwoTowerModel,
    autocast,
    embed_text,
    sampled_softmax_loss,
)
from recsys_lib.settings import TrainSettings


@dataclass(frozen=True)
class Batch:
    """One step's examples, on the training device."""

    history: torch.Tensor  # [B, L] catalogue indices, PAD where empty
    target: torch.Tensor  # [B] the next item of each history
    negatives: torch.Tensor  # [E] extra negatives, drawn from warm items
    encoded: int  # leading targets that go through the transformer with gradients (0: frozen)
    weight: torch.Tensor | None = None  # [B] each example's weight in the loss (None: all 1)


@dataclass(frozen=True)
class TrainOutput:
    loss: torch.Tensor  # the sampled softmax over cached candidates (+ the text-only term)
    encoder_loss: torch.Tensor | None  # the softmax among the freshly encoded items
    text_losses: dict[str, torch.Tensor] | None = None  # per kind of text pairs, weighted

    @property
    def total(self) -> torch.Tensor:
        extra = [self.encoder_loss] if self.encoder_loss is not None else []
        extra += list((self.text_losses or {}).values())
        return self.loss + sum(extra) if extra else self.loss


@dataclass(frozen=True)
class SearchPairs:
    """(text -> item) pairs a text loss learns from, grouped by text (query)."""

    queries: TokenizedDocuments  # distinct query texts; row q is query q
    starts: np.ndarray  # [n_queries] first pair of each query in ``items``
    counts: np.ndarray  # [n_queries] pairs of each query
    items: np.ndarray  # [n_pairs] catalogue indices, grouped by query
    n_items: int  # catalogue size (pair keys: query * n_items + item)

    @classmethod
    def from_frame(cls, pairs: pd.DataFrame, item_ids: pd.Index, tokenizer, max_length: int) -> "SearchPairs | None":
        """From (query, item_id) rows; items outside the catalogue are dropped. None if no pair is left."""
        rows = item_ids.get_indexer(pairs["item_id"])
        pairs = pd.DataFrame({"query": pairs["query"].to_numpy(), "item": rows})[rows >= 0]
        if pairs.empty:
            return None
        pairs = pairs.drop_duplicates().sort_values(["query", "item"], kind="stable")
        texts, counts = np.unique(pairs["query"].to_numpy(dtype=str), return_counts=True)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        queries = TokenizedDocuments.from_texts(tokenizer, texts.tolist(), max_length)
        return cls(queries, starts, counts, pairs["item"].to_numpy(np.int64).copy(), len(item_ids))

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(query rows [n], catalogue indices [n]): queries drawn uniformly, then one of each
        query's items, so that a category with thousands of items does not drown the tags."""
        query = torch.randint(0, len(self.starts), (n,), generator=generator)
        offset = (torch.rand(n, generator=generator) * torch.from_numpy(self.counts)[query]).long()
        return query, torch.from_numpy(self.items)[torch.from_numpy(self.starts)[query] + offset]

    def keys(self) -> torch.Tensor:
        """Every pair as one sorted integer key (query * n_items + item)."""
        query = np.repeat(np.arange(len(self.starts)), self.counts)
        return torch.from_numpy(np.sort(query * self.n_items + self.items))

    def is_pair(self, keys: torch.Tensor, query: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[q, i] bool: does query q describe item i (``keys``: ``self.keys()`` on their device)?"""
        wanted = query[:, None] * self.n_items + items[None, :]
        at = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
        return keys[at] == wanted


class TwoTowerTrainTask(nn.Module):
    """Losses of a two-tower model on batches of (history -> next item) examples.

    Args:
        documents: every catalogue item, tokenized; row i is catalogue index i.
        id_rows: [n_items] ID-embedding row of each catalogue item (NO_ID for cold items).
        targets: [n] every training example's target (sampling probabilities for logQ).
        batch_size: examples per step (the expected in-batch counts of logQ).
        pooled: the transformer's outputs for ``documents`` when they are known already (it is
            frozen); None encodes them.
        text_pairs: "search" and "interests" pairs for the text losses (weights:
            ``train.search_loss_weight``, ``train.interests_loss_weight``); missing kinds: none.
        side: [n_items, side_dim] the items' side vectors (rows of zeros: none), for a model
            that takes them; None: none.
    """

    def __init__(
        self,
        model: TwoTowerModel,
        documents: TokenizedDocuments,
        id_rows: np.ndarray,
        targets: np.ndarray,
        cfg: TrainSettings,
        batch_size: int,
        device: torch.device,
        pooled: torch.Tensor | None = None,
        text_pairs: dict[str, SearchPairs] | None = None,
        side: torch.Tensor | None = None,
    ):
        super().__init__()
        self.model = model
        self.documents = documents
        self.cfg = cfg
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.cpu_bf16 = cpu_bf16(cfg.cpu_precision, self.device)
        self.id_rows = torch.as_tensor(id_rows, dtype=torch.long, device=device)
        self.side = None if side is None or not model.config.side_dim else side.float().to(self.device)
        counts = np.bincount(targets, minlength=len(documents)).astype(np.float64)
        # Extra negatives are drawn from items that are positives somewhere in training: drawing
        # never-seen items would teach the model that unseen texts are bad, the opposite of what
        # cold start needs.
        self.warm_items = torch.as_tensor(np.flatnonzero(counts > 0))
        # logQ: each candidate's expected count in a batch (in-batch positives + uniform extras).
        expected = batch_size * counts / counts.sum() + cfg.extra_negatives * (counts > 0) / len(self.warm_items)
        self.log_q = torch.as_tensor(np.log(np.maximum(expected, 1e-12)), dtype=torch.float32, device=device)
        self.log_popularity = torch.as_tensor(np.log(np.maximum(counts, 1e-12)), dtype=torch.float32, device=device)
        weights = {SEARCH: cfg.search_loss_weight, INTERESTS: cfg.interests_loss_weight}
        self.texts = {
            kind: _TextObjective(pairs, weights[kind], kind == INTERESTS, pairs.keys().to(self.device))
            for kind, pairs in (text_pairs or {}).items() if pairs is not None and weights[kind] > 0
        }  # fmt: skip
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        if pooled is None:
            self.refresh()
        else:
            self.pooled_cache = pooled.to(self.device)
            self.pooled_exact = True
            self._encode_queries()

    def refresh(self, items: np.ndarray | None = None) -> torch.Tensor:
        """Re-encode the pooled transformer outputs of every document (``items``: of these
        catalogue indices only, the others keep their earlier outputs) and every query. The
        cache is a new tensor each time: a checkpoint keeps the one that measured it.
        ``pooled_exact`` says whether every row is the model's current output."""
        batch = max(256, self.batch_size)
        if items is None:
            self.pooled_cache = embed_text(self.model, self.documents, batch, self.device, pooled=True,
                                           cpu_bf16=self.cpu_bf16)  # fmt: skip
        else:
            fresh = embed_text(self.model, self.documents.subset(items), batch, self.device, pooled=True,
                               cpu_bf16=self.cpu_bf16)  # fmt: skip
            self.pooled_cache = self.pooled_cache.clone()
            self.pooled_cache[torch.as_tensor(items, device=self.device)] = fresh.to(self.pooled_cache.dtype)
        self.pooled_exact = items is None or len(items) == len(self.documents)
        self._encode_queries()
        return self.pooled_cache

    def _encode_queries(self) -> None:
        for text in self.texts.values():
            text.cache = embed_text(self.model, text.pairs.queries, max(256, self.batch_size), self.device,
                                    pooled=True, cpu_bf16=self.cpu_bf16)  # fmt: skip

    @torch.no_grad()
    def item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit vectors [n, d], biases [n]) of the catalogue from the cache, as served."""
        tower = self.model.item_tower
        text = tower.project(self.pooled_cache, self.side)
        return tower.combine(text, self.id_rows), tower.bias(text, self.id_rows)

    def _side(self, items: torch.Tensor) -> torch.Tensor | None:
        """Side vectors of catalogue indices ``items`` (any shape, flattened), or None."""
        return None if self.side is None else self.side[items.reshape(-1)]

    def _id_rows(self, items: torch.Tensor) -> torch.Tensor:
        """ID rows of ``items`` with ``id_dropout`` of them hidden (NO_ID)."""
        rows = self.id_rows[items]
        if self.cfg.id_dropout > 0:
            drop = torch.rand(rows.shape, device=self.device) < self.cfg.id_dropout
            rows = rows.masked_fill(drop, NO_ID)
        return rows

    def forward(self, batch: Batch) -> TrainOutput:
        tower, model, cfg = self.model.item_tower, self.model, self.cfg
        candidate_ids = torch.cat([batch.target, batch.negatives])
        fresh = None
        if batch.encoded:
            ids, mask = self.documents.batch(batch.target[: batch.encoded].cpu(), self.device)
            # No dropout: the fresh vectors of a step are ranked against cached ones computed
            # without it, and noisy positives among clean negatives would be a shortcut to learn.
            tower.encoder.eval()
            with autocast(self.device, self.cpu_bf16), eager_attention_on_cpu(tower.encoder, self.device):
                fresh = tower.pool(ids, mask).float()
            pooled = torch.cat([fresh.detach(), self.pooled_cache[candidate_ids[batch.encoded :]]])
        else:
            pooled = self.pooled_cache[candidate_ids]
        candidate_text = tower.project(pooled, self._side(candidate_ids))
        candidate_rows = self._id_rows(candidate_ids)
        candidates = tower.combine(candidate_text, candidate_rows)
        candidate_bias = tower.bias(candidate_text, candidate_rows)

        # Each distinct (item, ID shown or dropped) of the histories is one row of a table, computed
        # once: a popular item recurs in many histories, and [B, L, d] tensors would be most of
        # the step's cost.
        hist_items = batch.history.clamp(min=0)
        hist_rows = self._id_rows(hist_items)
        distinct, where = torch.unique(hist_items * 2 + (hist_rows == NO_ID), return_inverse=True)
        items = distinct // 2
        rows = torch.where(distinct % 2 == 1, NO_ID, self.id_rows[items])
        table = tower.combine(tower.project(self.pooled_cache[items], self._side(items)), rows)
        users = model.encode_users(table, where.masked_fill(batch.history == PAD, PAD)).float()

        correction = self.log_q[candidate_ids] if cfg.logq_correction else None
        loss = sampled_softmax_loss(
            users, candidates.float(), batch.target, candidate_ids, model.temperature, correction, candidate_bias,
            batch.weight,
        )  # fmt: skip
        if cfg.text_loss_weight > 0:
            # The same users against text-only items: the path a brand-new item takes.
            text_bias = tower.bias(candidate_text, torch.zeros_like(candidate_rows))
            loss = loss + cfg.text_loss_weight * sampled_softmax_loss(
                users, candidate_text, batch.target, candidate_ids, model.temperature, correction, text_bias,
                batch.weight,
            )  # fmt: skip
        if cfg.content_loss_weight > 0:
            # Item vectors as content vectors: the plain mean of the history's item vectors (all a
            # reader of the published vectors has) ranks the next item's text-only vector.
            present = (batch.history != PAD).to(table.dtype)
            profiles = F.normalize(F.embedding_bag(where, table, per_sample_weights=present, mode="sum"), dim=-1)
            loss = loss + cfg.content_loss_weight * sampled_softmax_loss(
                profiles.float(), candidate_text.float(), batch.target, candidate_ids, model.temperature, correction,
                None, batch.weight,
            )  # fmt: skip
        encoder_loss = None
        if fresh is not None:
            n = batch.encoded
            target = batch.target[:n]
            fresh_text, fresh_rows = tower.project(fresh, self._side(target)), candidate_rows[:n]
            encoder_loss = sampled_softmax_loss(
                users[:n],
                tower.combine(fresh_text, fresh_rows),
                target,
                target,
                model.temperature,
                self.log_popularity[target] if cfg.logq_correction else None,
                tower.bias(fresh_text, fresh_rows),
                None if batch.weight is None else batch.weight[:n],
            )
        text_losses = {
            kind: text.weight * self.text_loss(text, batch, candidate_ids, candidates, candidate_bias)
            for kind, text in self.texts.items()
        }
        return TrainOutput(loss, encoder_loss, text_losses or None)

    def text_loss(self, text: "_TextObjective", batch: Batch, candidate_ids: torch.Tensor, candidates: torch.Tensor,
                  candidate_bias: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Softmax of each sampled text over its item, the other sampled pairs' items and the
        step's candidates: the text's unit vector against item vectors (plus the item bias for
        interests, as a user's list is scored). While the transformer is fine-tuned, the step's
        first ``batch.encoded`` texts go through it with gradients, the others come from the cache."""
        tower = self.model.item_tower
        query_rows, items = text.pairs.sample(self.cfg.search_batch_size, self.generator)
        query_rows, items = query_rows.to(self.device), items.to(self.device)
        pooled = text.cache[query_rows]
        if batch.encoded:
            fresh = query_rows[: batch.encoded]
            ids, mask = text.pairs.queries.batch(fresh.cpu(), self.device)
            with autocast(self.device, self.cpu_bf16), eager_attention_on_cpu(tower.encoder, self.device):
                pooled = torch.cat([tower.pool(ids, mask).float(), pooled[len(fresh) :]])
        queries = tower.project(pooled)
        item_text, item_rows = tower.project(self.pooled_cache[items], self._side(items)), self._id_rows(items)
        positives = tower.combine(item_text, item_rows)
        logits = queries @ torch.cat([positives, candidates.float()]).T / self.model.temperature
        if text.with_bias:
            logits = logits + torch.cat([tower.bias(item_text, item_rows), candidate_bias.float()])
        # An item the text goes with (another of its pairs, a candidate) is no negative.
        others = text.pairs.is_pair(text.keys, query_rows, torch.cat([items, candidate_ids]))
        others[:, : len(items)].fill_diagonal_(False)
        logits = logits.masked_fill(others, torch.finfo(logits.dtype).min)
        return F.cross_entropy(logits, torch.arange(len(items), device=self.device))


@contextlib.contextmanager
def eager_attention_on_cpu(encoder: nn.Module, device: torch.device):
    """On a CPU, the transformer's passes with gradients run attention as plain matrix products:
    torch's fused CPU attention (SDPA) has a slow backward pass at these short lengths (MiniLM,
    32 documents of 32 tokens, top 3 layers trained, bf16: forward + backward 0.23 -> 0.17 s).
    Passes without gradients (the cached outputs) keep SDPA: as fast, and bit for bit what
    embedding computes. A GPU keeps its fused kernels."""
    previous = getattr(getattr(encoder, "config", None), "_attn_implementation", None)
    if device.type != "cpu" or previous != "sdpa" or not hasattr(encoder, "set_attn_implementation"):
        yield
        return
    encoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        encoder.set_attn_implementation(previous)


SEARCH, INTERESTS = "search", "interests"  # the kinds of text pairs


@dataclass
class _TextObjective:
    pairs: SearchPairs
    weight: float
    with_bias: bool
    keys: torch.Tensor  # pairs.keys() on the training device
    cache: torch.Tensor | None = None  # pooled transformer outputs of pairs.queries

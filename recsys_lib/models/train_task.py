"""The training objective around a ``TwoTowerModel``: ``forward(batch)`` returns the losses.

A step scores a batch of users against the batch's own next items plus uniformly drawn extra
negatives. Every item's vector comes from a cache of the transformer's pooled outputs (refreshed
by ``refresh``), put through the item tower's heads with gradients, plus the item's ID embedding
(hidden at random: ID dropout, so text alone learns to place an item). While the transformer is
fine-tuned, the batch's first ``encoded`` next items go through it with gradients, and it learns
from a softmax among those items only: against the cached negatives it would receive the pull of
each positive toward its user but none of the pushes away, and all item vectors would drift
toward the average user.
Tests: tests/unit/recsys_lib/models/test_train_task.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

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

    @property
    def total(self) -> torch.Tensor:
        return self.loss if self.encoder_loss is None else self.loss + self.encoder_loss


class TwoTowerTrainTask(nn.Module):
    """Losses of a two-tower model on batches of (history -> next item) examples.

    Args:
        documents: every catalogue item, tokenized; row i is catalogue index i.
        id_rows: [n_items] ID-embedding row of each catalogue item (NO_ID for cold items).
        targets: [n] every training example's target (sampling probabilities for logQ).
        batch_size: examples per step (the expected in-batch counts of logQ).
        pooled: the transformer's outputs for ``documents`` when they are known already (it is
            frozen); None encodes them.
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
    ):
        super().__init__()
        self.model = model
        self.documents = documents
        self.cfg = cfg
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.cpu_bf16 = cpu_bf16(cfg.cpu_precision, self.device)
        self.id_rows = torch.as_tensor(id_rows, dtype=torch.long, device=device)
        counts = np.bincount(targets, minlength=len(documents)).astype(np.float64)
        # Extra negatives are drawn from items that are positives somewhere in training: drawing
        # never-seen items would teach the model that unseen texts are bad, the opposite of what
        # cold start needs.
        self.warm_items = torch.as_tensor(np.flatnonzero(counts > 0))
        # logQ: each candidate's expected count in a batch (in-batch positives + uniform extras).
        expected = batch_size * counts / counts.sum() + cfg.extra_negatives * (counts > 0) / len(self.warm_items)
        self.log_q = torch.as_tensor(np.log(np.maximum(expected, 1e-12)), dtype=torch.float32, device=device)
        self.log_popularity = torch.as_tensor(np.log(np.maximum(counts, 1e-12)), dtype=torch.float32, device=device)
        self.pooled_cache = self.refresh() if pooled is None else pooled.to(self.device)

    def refresh(self) -> torch.Tensor:
        """Re-encode every document's pooled transformer output (exact while it is frozen)."""
        self.pooled_cache = embed_text(
            self.model, self.documents, max(256, self.batch_size), self.device, pooled=True, cpu_bf16=self.cpu_bf16
        )
        return self.pooled_cache

    @torch.no_grad()
    def item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit vectors [n, d], biases [n]) of the catalogue from the cache, as served."""
        tower = self.model.item_tower
        text = tower.project(self.pooled_cache)
        return tower.combine(text, self.id_rows), tower.bias(text, self.id_rows)

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
            with autocast(self.device, self.cpu_bf16):
                fresh = tower.pool(ids, mask).float()
            pooled = torch.cat([fresh.detach(), self.pooled_cache[candidate_ids[batch.encoded :]]])
        else:
            pooled = self.pooled_cache[candidate_ids]
        candidate_text = tower.project(pooled)
        candidate_rows = self._id_rows(candidate_ids)
        candidates = tower.combine(candidate_text, candidate_rows)
        candidate_bias = tower.bias(candidate_text, candidate_rows)

        hist_mask = batch.history != PAD
        hist_items = batch.history.clamp(min=0)
        hist_text = tower.project(self.pooled_cache[hist_items.reshape(-1)]).reshape(*hist_items.shape, -1)
        hist_vectors = tower.combine(hist_text, self._id_rows(hist_items))
        users = model.encode_users(hist_vectors * hist_mask.unsqueeze(-1), hist_mask).float()

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
        encoder_loss = None
        if fresh is not None:
            n = batch.encoded
            fresh_text, fresh_rows, target = tower.project(fresh), candidate_rows[:n], batch.target[:n]
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
        return TrainOutput(loss, encoder_loss)

"""Fine-tuning the two-tower model on (user history -> next item) examples.

Each step encodes the batch's target items with gradients (the item tower learns from the text)
and reads history items from a cache of item vectors that is refreshed every
``refresh_every`` steps, which keeps a step's cost at one encoder pass over B documents.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from recsys_lib.models.two_tower import (
    PAD,
    TokenizedDocuments,
    TwoTowerModel,
    autocast,
    embed_documents,
    gather_history,
    in_batch_softmax_loss,
)
from recsys_lib.schema import ITEM_COL, TIMESTAMP_COL, USER_COL
from recsys_lib.settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingExamples:
    history: np.ndarray  # [n, L] catalogue indices, right-aligned, PAD where empty
    target: np.ndarray  # [n] catalogue index of the next item

    def __len__(self) -> int:
        return len(self.target)


def build_examples(interactions: pd.DataFrame, item_ids: pd.Index, history_length: int) -> TrainingExamples:
    """One example per event that has at least one earlier event of the same user.

    Args:
        interactions: user_id, item_id, timestamp rows (any order).
        item_ids: the catalogue; position in it is the item's index. Unknown items are dropped.
        history_length: how many preceding items each example keeps (latest last).
    """
    df = interactions[[USER_COL, ITEM_COL, TIMESTAMP_COL]].copy()
    df["_item"] = item_ids.get_indexer(df[ITEM_COL])
    df = df[df["_item"] >= 0].sort_values([USER_COL, TIMESTAMP_COL, ITEM_COL], kind="stable")
    items = df["_item"].to_numpy(np.int64)
    users = df[USER_COL].to_numpy()
    n = len(items)
    if n == 0:
        return TrainingExamples(np.empty((0, history_length), np.int64), np.empty(0, np.int64))
    first = np.ones(n, dtype=bool)
    first[1:] = users[1:] != users[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    position = np.arange(n) - start
    rows = np.flatnonzero(position >= 1)
    history = np.full((len(rows), history_length), PAD, dtype=np.int64)
    for k in range(1, history_length + 1):
        ok = position[rows] >= k
        history[ok, history_length - k] = items[rows[ok] - k]
    return TrainingExamples(history, items[rows])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_two_tower(
    model: TwoTowerModel,
    documents: TokenizedDocuments,
    examples: TrainingExamples,
    cfg: TrainSettings,
    device: torch.device,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Fine-tune ``model`` in place for ``cfg.max_steps`` steps; returns a summary of the run."""
    if len(examples) < 2:
        raise ValueError(f"need at least 2 training examples, got {len(examples)}: too little interaction history")
    seed_everything(cfg.seed)
    model.to(device).train()
    model.freeze_encoder_layers(cfg.trainable_layers)
    groups = [{"params": model.head_parameters(), "lr": cfg.head_learning_rate}]
    if model.encoder_parameters():
        groups.append({"params": model.encoder_parameters(), "lr": cfg.learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps = cfg.max_steps
    warmup = max(1, int(steps * cfg.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    batch_size = min(cfg.batch_size, len(examples))
    # logQ correction: how often each item is drawn as an in-batch candidate.
    counts = np.bincount(examples.target, minlength=len(documents)).astype(np.float64)
    log_q = torch.as_tensor(np.log(np.maximum(counts, 1) / counts.sum()), dtype=torch.float32, device=device)
    history = torch.as_tensor(examples.history)
    target = torch.as_tensor(examples.target)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(examples), generator=generator)
    cursor = 0
    cache = None
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(steps):
        if cache is None or (cfg.refresh_every > 0 and step % cfg.refresh_every == 0):
            cache = embed_documents(model, documents, batch_size=max(256, batch_size), device=device)
        if cursor + batch_size > len(order):
            order = torch.randperm(len(examples), generator=generator)
            cursor = 0
        index = order[cursor : cursor + batch_size]
        cursor += batch_size
        batch_target = target[index].to(device)
        ids, mask = documents.batch(target[index], device)
        hist_vectors, hist_mask = gather_history(cache, history[index].to(device))
        with autocast(device):
            items = model.encode_items(ids, mask)
            users = model.encode_users(hist_vectors, hist_mask)
        loss = in_batch_softmax_loss(users.float(), items.float(), batch_target, model.temperature, log_q[batch_target])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step is not None and (step % 10 == 0 or step == steps - 1):
            on_step(step, {"train_loss": losses[-1], "temperature": model.temperature.item()})
        if step % 50 == 0 or step == steps - 1:
            log.info("step %d/%d loss %.4f (%.1fs)", step + 1, steps, losses[-1], time.perf_counter() - started)
    model.eval()
    tail = losses[-max(1, min(20, len(losses))) :]
    return {
        "train_loss": float(np.mean(tail)),
        "first_loss": float(losses[0]),
        "steps": float(steps),
        "examples": float(len(examples)),
        "train_seconds": time.perf_counter() - started,
        "temperature": model.temperature.item(),
    }

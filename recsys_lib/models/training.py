"""Fine-tuning the two-tower model on (user history -> next item) examples.

A step scores a batch of users against the batch's own next items plus uniformly drawn extra
negatives, with every item's vector from a cache of the transformer's pooled outputs (refreshed
every ``refresh_every`` steps) put through the item tower's heads with gradients, plus the
item's ID embedding. Training runs in two phases (linear probing, then fine-tuning):

1. ``frozen_steps`` steps train everything but the transformer. The cache is exact while the
   transformer is frozen, and a step costs no transformer pass at all.
2. ``max_steps`` steps also fine-tune the transformer: ``encoder_batch_size`` of the batch's
   next items (all of them on a GPU) go through it with gradients, and it learns from a softmax
   among those items only, where every candidate carries its gradient. Against the cached
   negatives it would receive the pull of each positive toward its user but none of the pushes
   away from the negatives, and all item vectors would drift toward the average user.

Each refresh also scores the validation users (every user's last training event, held out from
the examples); the best fine-tuning state wins, and fine-tuning stops early when NDCG@10 stops
improving.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from recsys_lib.models.two_tower import (
    NO_ID,
    PAD,
    TokenizedDocuments,
    TwoTowerModel,
    autocast,
    embed_text,
    embed_users,
    sampled_softmax_loss,
)
from recsys_lib.schema import ITEM_COL, TIMESTAMP_COL, USER_COL, VALIDATION_COL
from recsys_lib.settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingExamples:
    history: np.ndarray  # [n, L] catalogue indices, right-aligned, PAD where empty
    target: np.ndarray  # [n] catalogue index of the next item

    def __len__(self) -> int:
        return len(self.target)


@dataclass(frozen=True)
class ValidationSet:
    history: np.ndarray  # [u, L] each validation user's history before the held-out event
    target: np.ndarray  # [u] the held-out item
    exclude: list[np.ndarray]  # per user, the other items seen in training (not ranked)

    def __len__(self) -> int:
        return len(self.target)

    def sample(self, n: int, seed: int) -> "ValidationSet":
        """At most ``n`` users, drawn with ``seed``: scoring every user against the whole
        catalogue at each refresh costs users x items, too much at millions of each."""
        if n <= 0 or len(self) <= n:
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return ValidationSet(self.history[rows], self.target[rows], [self.exclude[r] for r in rows])


def _sequences(interactions: pd.DataFrame, item_ids: pd.Index) -> pd.DataFrame:
    df = interactions.copy()
    df["_item"] = item_ids.get_indexer(df[ITEM_COL])
    return df[df["_item"] >= 0].sort_values([USER_COL, TIMESTAMP_COL, ITEM_COL], kind="stable")


def build_examples(interactions: pd.DataFrame, item_ids: pd.Index, history_length: int) -> TrainingExamples:
    """One example per event that has at least one earlier event of the same user.

    Args:
        interactions: user_id, item_id, timestamp rows (any order).
        item_ids: the catalogue; position in it is the item's index. Unknown items are dropped.
        history_length: how many preceding items each example keeps (latest last).
    """
    df = _sequences(interactions[[USER_COL, ITEM_COL, TIMESTAMP_COL]], item_ids)
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


def build_validation(
    interactions: pd.DataFrame, item_ids: pd.Index, history_length: int
) -> tuple[pd.DataFrame, ValidationSet]:
    """Split training interactions into (events to train on, the validation set).

    Args:
        interactions: training interactions with a boolean ``is_validation`` column marking
            each user's held-out validation event (see features.mark_validation).
    """
    flag = interactions[VALIDATION_COL].to_numpy(bool)
    train, held = interactions[~flag], interactions[flag]
    seq = _sequences(train[[USER_COL, ITEM_COL, TIMESTAMP_COL]], item_ids)
    grouped = seq.groupby(USER_COL, sort=False)["_item"].agg(list)
    held = held[held[ITEM_COL].isin(item_ids)]
    histories = [np.asarray(grouped.get(u, []), dtype=np.int64) for u in held[USER_COL]]
    history = np.full((len(held), history_length), PAD, dtype=np.int64)
    for row, h in enumerate(histories):
        h = h[-history_length:]
        if len(h):
            history[row, -len(h) :] = h
    keep = (history != PAD).any(axis=1)
    target = item_ids.get_indexer(held[ITEM_COL]).astype(np.int64)
    exclude = [np.unique(h) for h, k in zip(histories, keep) if k]
    return train, ValidationSet(history[keep], target[keep], exclude)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _add_lora(model: TwoTowerModel, rank: int) -> None:
    """Fine-tune the encoder through low-rank adapters on its attention (peft's defaults per
    architecture); the base weights stay frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05)
    model.item_tower.encoder = get_peft_model(model.item_tower.encoder, config)


@torch.no_grad()
def validation_metrics(
    model: TwoTowerModel,
    item_vectors: torch.Tensor,
    item_bias: torch.Tensor,
    validation: ValidationSet,
    max_scores: int = 2**26,
) -> dict[str, float]:
    """NDCG@10 and Recall@20 of each validation user's held-out item, ranked over the catalogue.

    Users are scored in batches of at most ``max_scores`` user-item scores (256 MiB)."""
    batch_size = max(1, min(1024, max_scores // max(1, len(item_vectors))))
    users = embed_users(model, item_vectors, validation.history)
    ranks = []
    for start in range(0, len(validation), batch_size):
        scores = model.score(users[start : start + batch_size], item_vectors, item_bias)
        rows = torch.arange(len(scores), device=scores.device)
        target = torch.as_tensor(validation.target[start : start + batch_size], device=scores.device)
        for row, excluded in enumerate(validation.exclude[start : start + batch_size]):
            scores[row, torch.as_tensor(excluded, device=scores.device)] = float("-inf")
        positive = scores[rows, target].unsqueeze(1)
        ranks.append((scores > positive).sum(1).cpu())
    rank = torch.cat(ranks).numpy() if ranks else np.empty(0)
    if not len(rank):
        return {"val_ndcg_at_10": 0.0, "val_recall_at_20": 0.0}
    ndcg = np.where(rank < 10, 1.0 / np.log2(rank + 2), 0.0)
    return {"val_ndcg_at_10": float(ndcg.mean()), "val_recall_at_20": float((rank < 20).mean())}


def warmup_linear_decay(start: int, end: int, warmup_fraction: float) -> Callable[[int], float]:
    """Learning-rate factor: 0 before ``start``, a linear warm-up over ``warmup_fraction`` of
    [start, end), then a linear decay to 0 at ``end``."""
    warmup = max(1, int((end - start) * warmup_fraction))

    def factor(step: int) -> float:
        s = step - start
        if s < 0:
            return 0.0
        return min((s + 1) / warmup, max(0.0, (end - step) / max(1, end - start - warmup)))

    return factor


def train_two_tower(
    model: TwoTowerModel,
    documents: TokenizedDocuments,
    id_rows: np.ndarray,
    examples: TrainingExamples,
    cfg: TrainSettings,
    device: torch.device,
    validation: ValidationSet | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Fine-tune ``model`` in place; returns a summary of the run.

    Args:
        documents: every catalogue item, tokenized; row i is catalogue index i.
        id_rows: [n_items] ID-embedding row of each catalogue item (NO_ID for cold items).
        examples: training examples over catalogue indices.
        validation: held-out events for early stopping; None trains ``cfg.max_steps`` steps.
    """
    if len(examples) < 2:
        raise ValueError(f"need at least 2 training examples, got {len(examples)}: too little interaction history")
    seed_everything(cfg.seed)
    model.freeze_encoder_layers(cfg.trainable_layers)
    if cfg.lora_rank > 0:
        _add_lora(model, cfg.lora_rank)
    model.to(device).train()
    # ID tables and biases live on a logit scale that must move far: they get a larger step.
    tower = model.item_tower
    id_params = [tower.id_embedding.weight, tower.id_bias.weight, tower.text_bias.weight, tower.text_bias.bias]
    heads = [p for p in model.head_parameters() if all(p is not q for q in id_params)]
    groups = [
        {"params": heads, "lr": cfg.head_learning_rate},
        {"params": id_params, "lr": cfg.id_learning_rate, "weight_decay": 0.0},
    ]
    if model.encoder_parameters():
        groups.append({"params": model.encoder_parameters(), "lr": cfg.learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    # Linear probing, then fine-tuning (LP-FT, Kumar et al., 2022): the first ``frozen_steps``
    # train everything but the transformer on its cached outputs (exact while it is frozen, and
    # a fraction of a fine-tuning step's cost), so fine-tuning starts from trained heads instead
    # of distorting the pretrained features to fit random ones.
    fine_tunes = bool(model.encoder_parameters())
    frozen = cfg.frozen_steps if fine_tunes else 0
    steps = frozen + cfg.max_steps
    schedules = [warmup_linear_decay(0, steps, cfg.warmup_fraction)] * 2
    if fine_tunes:
        schedules.append(warmup_linear_decay(frozen, steps, cfg.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    n_items = len(documents)
    batch_size = min(cfg.batch_size, len(examples))
    encoded = max(1, min(cfg.encoder_batch_size, batch_size))
    extra = cfg.extra_negatives
    # logQ: each candidate's expected count in a batch (in-batch positives + uniform extras).
    counts = np.bincount(examples.target, minlength=n_items).astype(np.float64)
    # Extra negatives are drawn from items that are positives somewhere in training: drawing
    # never-seen items would teach the model that unseen texts are bad, the opposite of what
    # cold start needs.
    warm_items = torch.as_tensor(np.flatnonzero(counts > 0))
    expected = batch_size * counts / counts.sum() + extra * (counts > 0) / len(warm_items)
    log_q = torch.as_tensor(np.log(np.maximum(expected, 1e-12)), dtype=torch.float32, device=device)
    log_popularity = torch.as_tensor(np.log(np.maximum(counts, 1e-12)), dtype=torch.float32, device=device)
    id_rows_t = torch.as_tensor(id_rows, dtype=torch.long, device=device)
    history = torch.as_tensor(examples.history)
    target = torch.as_tensor(examples.target)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(examples), generator=generator)
    cursor = 0
    losses: list[float] = []
    best = {"val_ndcg_at_10": -1.0, "step": 0}
    best_state = None
    evaluations_without_gain = 0
    stopped_early = False
    started = time.perf_counter()
    # Pooled transformer outputs, refreshed every ``refresh_every`` steps; the projection on top
    # of them is applied with gradients to every item a step touches.
    pooled_cache = embed_text(model, documents, max(256, batch_size), device, pooled=True)

    def rows_with_dropout(items: torch.Tensor) -> torch.Tensor:
        rows = id_rows_t[items]
        if cfg.id_dropout > 0:
            drop = torch.rand(rows.shape, device=device) < cfg.id_dropout
            rows = rows.masked_fill(drop, NO_ID)
        return rows

    step = 0
    for step in range(steps):
        encoder_trains = fine_tunes and step >= frozen
        if step == frozen and fine_tunes:
            # The frozen phase prepared the heads; the model is the fine-tuned one, so its
            # checkpoints compete among themselves (the frozen ones stay in the logged curve).
            best, best_state, evaluations_without_gain = {"val_ndcg_at_10": -1.0, "step": 0}, None, 0
        if cursor + batch_size > len(order):
            order = torch.randperm(len(examples), generator=generator)
            cursor = 0
        index = order[cursor : cursor + batch_size]
        cursor += batch_size
        tgt = target[index].to(device)
        hist = history[index].to(device)
        negatives = warm_items[torch.randint(0, len(warm_items), (extra,), generator=generator)].to(device)
        candidate_ids = torch.cat([tgt, negatives])
        if encoder_trains:
            ids, mask = documents.batch(target[index[:encoded]], device)
            # No dropout: the fresh vectors of a step are ranked against cached ones computed
            # without it, and noisy positives among clean negatives would be a shortcut to learn.
            model.item_tower.encoder.eval()
            with autocast(device):
                fresh = model.item_tower.pool(ids, mask).float()
            pooled = torch.cat([fresh.detach(), pooled_cache[candidate_ids[encoded:]]])
        else:
            pooled = pooled_cache[candidate_ids]
        candidate_text = model.item_tower.project(pooled)
        candidate_rows = rows_with_dropout(candidate_ids)
        candidates = model.item_tower.combine(candidate_text, candidate_rows)
        candidate_bias = model.item_tower.bias(candidate_text, candidate_rows)
        hist_mask = hist != PAD
        hist_items = hist.clamp(min=0)
        hist_text = model.item_tower.project(pooled_cache[hist_items.reshape(-1)]).reshape(*hist_items.shape, -1)
        hist_vectors = model.item_tower.combine(hist_text, rows_with_dropout(hist_items))
        users = model.encode_users(hist_vectors * hist_mask.unsqueeze(-1), hist_mask).float()
        correction = log_q[candidate_ids] if cfg.logq_correction else None
        loss = sampled_softmax_loss(
            users, candidates.float(), tgt, candidate_ids, model.temperature, correction, candidate_bias
        )
        if cfg.text_loss_weight > 0:
            # The same users against text-only items: the path a brand-new item takes.
            text_bias = model.item_tower.bias(candidate_text, torch.zeros_like(candidate_rows))
            loss = loss + cfg.text_loss_weight * sampled_softmax_loss(
                users, candidate_text, tgt, candidate_ids, model.temperature, correction, text_bias
            )
        encoder_loss = None
        if encoder_trains:
            # The transformer learns from a softmax among the items that went through it. Against
            # cached negatives it would get every pull toward the users but none of the pushes
            # away, and all item vectors would drift toward the average user.
            fresh_text = model.item_tower.project(fresh)
            fresh_rows = candidate_rows[:encoded]
            encoder_loss = sampled_softmax_loss(
                users[:encoded],
                model.item_tower.combine(fresh_text, fresh_rows),
                tgt[:encoded],
                tgt[:encoded],
                model.temperature,
                log_popularity[tgt[:encoded]] if cfg.logq_correction else None,
                model.item_tower.bias(fresh_text, fresh_rows),
            )
        optimizer.zero_grad(set_to_none=True)
        (loss if encoder_loss is None else loss + encoder_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step is not None and (step % 10 == 0 or step == steps - 1):
            logged = {"train_loss": losses[-1], "temperature": model.temperature.item()}
            if encoder_loss is not None:
                logged["encoder_loss"] = encoder_loss.item()
            on_step(step, logged)
        last = step == steps - 1
        if (cfg.refresh_every > 0 and (step + 1) % cfg.refresh_every == 0) or last or step + 1 == frozen:
            if encoder_trains:
                pooled_cache = embed_text(model, documents, max(256, batch_size), device, pooled=True)
            if validation is not None and len(validation):
                with torch.no_grad():
                    text = model.item_tower.project(pooled_cache)
                    item_vectors = model.item_tower.combine(text, id_rows_t)
                    item_bias = model.item_tower.bias(text, id_rows_t)
                metrics = validation_metrics(model, item_vectors, item_bias, validation)
                if on_step is not None:
                    on_step(step, metrics)
                log.info(
                    "step %d/%d loss %.4f val ndcg@10 %.4f recall@20 %.4f (%.0fs)",
                    step + 1,
                    steps,
                    np.mean(losses[-cfg.refresh_every :]),
                    metrics["val_ndcg_at_10"],
                    metrics["val_recall_at_20"],
                    time.perf_counter() - started,
                )
                if metrics["val_ndcg_at_10"] > best["val_ndcg_at_10"]:
                    best = {**metrics, "step": step + 1}
                    best_state = copy.deepcopy(model.state_dict())
                    evaluations_without_gain = 0
                else:
                    evaluations_without_gain += 1
                    if step >= frozen and evaluations_without_gain >= cfg.patience:
                        stopped_early = True
                        log.info("early stop: no gain in %d evaluations; best at step %d", cfg.patience, best["step"])
                        break
            else:
                log.info("step %d/%d loss %.4f (%.0fs)", step + 1, steps, losses[-1], time.perf_counter() - started)
    if best_state is not None:
        model.load_state_dict(best_state)
    if cfg.lora_rank > 0:
        # Checkpoints hold a plain encoder: the adapters are folded into its weights.
        model.item_tower.encoder = model.item_tower.encoder.merge_and_unload()
    model.eval()
    tail = losses[-max(1, min(50, len(losses))) :]
    report = {
        "train_loss": float(np.mean(tail)),
        "first_loss": float(losses[0]),
        "steps": float(step + 1),
        "best_step": float(best["step"] or step + 1),
        "stopped_early": float(stopped_early),
        "examples": float(len(examples)),
        "epochs": (step + 1) * batch_size / len(examples),
        "train_seconds": time.perf_counter() - started,
        "temperature": model.temperature.item(),
    }
    if best_state is not None:
        report.update({k: v for k, v in best.items() if k.startswith("val_")})
    if not math.isfinite(report["train_loss"]):
        raise FloatingPointError("training diverged: the loss is not finite")
    return report

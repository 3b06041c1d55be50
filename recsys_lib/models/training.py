"""Fine-tuning the two-tower model: the loop and its named parts.

Training runs in two phases (linear probing, then fine-tuning; Kumar et al., 2022):

1. ``frozen_steps`` steps train everything but the transformer on its cached outputs, which are
   exact while it is frozen, so a step costs no transformer pass at all;
2. ``max_steps`` steps also fine-tune the transformer (``encoder_batch_size`` of each batch's
   next items go through it with gradients; all of them on a GPU).

The losses are ``TwoTowerTrainTask``'s; here are the optimiser (separate learning rates for the
transformer, the heads and the ID tables), the warm-up + linear-decay schedule per phase, the
seeded batch sampler, and early stopping: every ``refresh_every`` steps the validation users
(each user's last training event) are ranked, the best fine-tuning state wins, and fine-tuning
stops when NDCG at the primary cut-off stops improving.
Tests: tests/unit/recsys_lib/models/test_training.py (tiny random encoders).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from recsys_lib.errors import DataValidationError
from recsys_lib.logs import Progress
from recsys_lib.models.examples import TrainingData, TrainingExamples, ValidationSet
from recsys_lib.models.inference import cpu_bf16
from recsys_lib.models.train_task import Batch, SearchPairs, TwoTowerTrainTask
from recsys_lib.models.two_tower import TokenizedDocuments, TwoTowerModel, embed_text, embed_users
from recsys_lib.settings import ModelSettings, Settings, TrainSettings

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


class TwoTowerOptimizer:
    """AdamW over the dense parameters (separate learning rates for the transformer, the heads
    and the item-bias head) and lazy Adam (``SparseAdam``) over the ID tables, whose gradients are
    sparse: a dense gradient and update of a 100k-item table cost 0.38 s a step on 2 cores, most
    of a step; the lazy one touches only the rows in the batch. Each group has its schedule."""

    def __init__(self, dense: torch.optim.Optimizer, dense_schedules: list, sparse: torch.optim.Optimizer,
                 sparse_schedule: Callable[[int], float]):  # fmt: skip
        self.optimizers = (dense, sparse)
        self.schedulers = (
            torch.optim.lr_scheduler.LambdaLR(dense, dense_schedules),
            torch.optim.lr_scheduler.LambdaLR(sparse, sparse_schedule),
        )

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def step(self, max_norm: float = 1.0) -> None:
        """Clip the gradients of every parameter trained to ``max_norm`` in all, then update and schedule."""
        clip_gradients([p for o in self.optimizers for group in o.param_groups for p in group["params"]], max_norm)
        for optimizer in self.optimizers:
            optimizer.step()
        for scheduler in self.schedulers:
            scheduler.step()


def clip_gradients(parameters, max_norm: float) -> None:
    """``clip_grad_norm_`` over dense and sparse gradients alike (torch's rejects sparse ones)."""
    parameters = [p for p in parameters if p.grad is not None]
    if not parameters:
        return
    for p in parameters:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # once: SparseAdam would coalesce it again
    grads = [p.grad for p in parameters]
    norms = torch.stack([torch.linalg.vector_norm(g.values() if g.is_sparse else g) for g in grads])
    coefficient = (max_norm / (torch.linalg.vector_norm(norms) + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coefficient)


def build_optimizer(model: TwoTowerModel, cfg: TrainSettings, frozen_steps: int, steps: int) -> TwoTowerOptimizer:
    """The heads and ID tables learn from step 0, the transformer (if it is fine-tuned at all)
    from ``frozen_steps``, each with its own warm-up and decay."""
    # ID tables and biases live on a logit scale that must move far: they get a larger step.
    tower = model.item_tower
    id_tables = [tower.id_embedding.weight, tower.id_bias.weight]
    bias_head = [tower.text_bias.weight, tower.text_bias.bias]
    heads = [p for p in model.head_parameters() if all(p is not q for q in id_tables + bias_head)]
    groups = [
        {"params": heads, "lr": cfg.head_learning_rate},
        {"params": bias_head, "lr": cfg.id_learning_rate, "weight_decay": 0.0},
    ]
    head_schedule = warmup_linear_decay(0, steps, cfg.warmup_fraction)
    schedules = [head_schedule] * 2
    if model.encoder_parameters():
        groups.append({"params": model.encoder_parameters(), "lr": cfg.learning_rate})
        schedules.append(warmup_linear_decay(frozen_steps, steps, cfg.warmup_fraction))
    dense = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    return TwoTowerOptimizer(dense, schedules, torch.optim.SparseAdam(id_tables, lr=cfg.id_learning_rate),
                             head_schedule)  # fmt: skip


class BatchSampler:
    """Examples in a seeded random order, epoch after epoch, with uniformly drawn extra negatives."""

    def __init__(self, examples: TrainingExamples, warm_items: torch.Tensor, batch_size: int, cfg: TrainSettings):
        self.history = torch.as_tensor(examples.history)
        self.target = torch.as_tensor(examples.target)
        self.weight = None if examples.weight is None else torch.as_tensor(examples.weight)
        self.warm_items = warm_items
        self.batch_size = batch_size
        self.extra_negatives = cfg.extra_negatives
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.order = torch.randperm(len(examples), generator=self.generator)
        self.cursor = 0

    def next(self, device: torch.device, encoded: int = 0) -> Batch:
        if self.cursor + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.order), generator=self.generator)
            self.cursor = 0
        index = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        draw = torch.randint(0, len(self.warm_items), (self.extra_negatives,), generator=self.generator)
        return Batch(
            history=self.history[index].long().to(device),
            target=self.target[index].to(device),
            negatives=self.warm_items[draw].to(device),
            encoded=encoded,
            weight=None if self.weight is None else self.weight[index].to(device),
        )


class EarlyStopping:
    """Keeps the best state by ``metric`` and says when ``patience`` evaluations brought no gain."""

    def __init__(self, metric: str, patience: int):
        self.metric = metric
        self.patience = patience
        self.reset()

    def reset(self) -> None:
        self.best: dict[str, float] = {self.metric: -1.0, "step": 0}
        self.state: dict | None = None
        self.pooled: torch.Tensor | None = None
        self.without_gain = 0

    def update(
        self, metrics: dict[str, float], step: int, model: torch.nn.Module, pooled: torch.Tensor | None = None
    ) -> bool:
        """Record an evaluation at ``step`` (``pooled``: the transformer's outputs of that state,
        kept with it); True when it is time to stop."""
        if metrics[self.metric] > self.best[self.metric]:
            self.best = {**metrics, "step": step}
            self.state = copy.deepcopy(model.state_dict())
            self.pooled = pooled
            self.without_gain = 0
            return False
        self.without_gain += 1
        return self.without_gain >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


@torch.no_grad()
def validation_metrics(
    model: TwoTowerModel,
    item_vectors: torch.Tensor,
    item_bias: torch.Tensor,
    validation: ValidationSet,
    ks: Sequence[int],
    max_scores: int = 2**26,
    ranked: np.ndarray | None = None,
) -> dict[str, float]:
    """NDCG@k and Recall@k of each validation user's held-out item, ranked over the catalogue
    (``ranked``: over these catalogue indices only, which hold every validation target).

    Users are scored in batches of at most ``max_scores`` user-item scores (256 MiB)."""
    users = embed_users(model, item_vectors, validation.history)
    position = np.arange(len(item_vectors))
    if ranked is not None:
        position = np.full(len(item_vectors), -1)
        position[ranked] = np.arange(len(ranked))
        index = torch.as_tensor(ranked, device=item_vectors.device)
        item_vectors, item_bias = item_vectors[index], item_bias[index]
    batch_size = max(1, min(1024, max_scores // max(1, len(item_vectors))))
    ranks = []
    for start in range(0, len(validation), batch_size):
        scores = model.score(users[start : start + batch_size], item_vectors, item_bias)
        rows = torch.arange(len(scores), device=scores.device)
        target = torch.as_tensor(position[validation.target[start : start + batch_size]], device=scores.device)
        for row, excluded in enumerate(validation.exclude[start : start + batch_size]):
            excluded = position[excluded]
            scores[row, torch.as_tensor(excluded[excluded >= 0], device=scores.device)] = float("-inf")
        positive = scores[rows, target].unsqueeze(1)
        ranks.append((scores > positive).sum(1).cpu())
    rank = torch.cat(ranks).numpy() if ranks else np.empty(0)
    out = {}
    for k in ks:
        hit = rank < k
        out[f"val_ndcg_at_{k}"] = float(np.where(hit, 1.0 / np.log2(rank + 2), 0.0).mean()) if len(rank) else 0.0
        out[f"val_recall_at_{k}"] = float(hit.mean()) if len(rank) else 0.0
    return out


def train_two_tower(
    model: TwoTowerModel,
    documents: TokenizedDocuments,
    id_rows: np.ndarray,
    examples: TrainingExamples,
    cfg: TrainSettings,
    device: torch.device,
    validation: ValidationSet | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    *,
    ks: Sequence[int],
    pooled: torch.Tensor | None = None,
    keep_initial: bool = False,
    text_pairs: dict[str, SearchPairs] | None = None,
    side: torch.Tensor | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """Fine-tune ``model`` in place; returns (a summary of the run, the transformer's pooled
    outputs for ``documents`` from the model as it ends: kept from the refresh that measured
    the restored state, so nobody encodes the catalogue again for them).

    Args:
        documents: every catalogue item, tokenized; row i is catalogue index i.
        id_rows: [n_items] ID-embedding row of each catalogue item (NO_ID for cold items).
        examples: training examples over catalogue indices.
        validation: held-out events for early stopping; None trains every step.
        ks: validation cut-offs; early stopping follows NDCG at the first.
        pooled: the transformer's outputs for ``documents``, when known (see TwoTowerTrainTask).
        keep_initial: the starting state (a warm start) competes with every checkpoint of the
            run: a night that cannot improve on its champion keeps it rather than degrade it.
        text_pairs: "search" / "interests" pairs for the text losses (see TwoTowerTrainTask).
        side: [n_items, side_dim] the items' side vectors, for a model that takes them.
    """
    if len(examples) < 2:
        raise DataValidationError(
            f"need at least 2 training examples, got {len(examples)}: too little positive interaction history "
            "(an example is a user's event with another positive event of the same user to learn it from)"
        )
    seed_everything(cfg.seed)
    model.freeze_encoder_layers(cfg.trainable_layers)
    if cfg.lora_rank > 0:
        _add_lora(model, cfg.lora_rank)
    model.to(device).train()
    fine_tunes = bool(model.encoder_parameters())
    frozen = cfg.frozen_steps if fine_tunes else 0
    steps = frozen + cfg.max_steps
    if steps < 1:
        raise ValueError("no training steps: train.frozen_steps + train.max_steps must be at least 1")
    optimizer = build_optimizer(model, cfg, frozen, steps)
    batch_size = min(cfg.batch_size, len(examples))
    encoded = max(1, min(cfg.encoder_batch_size, batch_size))
    task = TwoTowerTrainTask(model, documents, id_rows, examples.target, cfg, batch_size, device, pooled, text_pairs,
                             side)  # fmt: skip
    sampler = BatchSampler(examples, task.warm_items, batch_size, cfg)
    stopper = EarlyStopping(f"val_ndcg_at_{ks[0]}", cfg.patience)
    ranked = None if validation is None else validation_items(examples.target, validation.target, len(documents),
                                                              cfg.validation_items)  # fmt: skip
    if keep_initial and validation is not None and len(validation):
        # A warm start is a trained model already: training must beat it to replace it.
        initial = validation_metrics(model, *task.item_vectors(), validation, ks, ranked=ranked)
        stopper.update(initial, 0, model, task.pooled_cache)
        log.info("warm start: %s", " ".join(f"{k} {v:.4f}" for k, v in initial.items()))
    losses: list[float] = []
    stopped_early = False
    started = time.perf_counter()
    progress = Progress(log, "train", steps, "steps", every_s=float("inf"))  # its lines: below
    step = 0
    for step in range(steps):
        progress.advance()
        fine_tuning = fine_tunes and step >= frozen
        if fine_tuning and step == frozen and not keep_initial:
            # The frozen phase prepared the heads; the model is the fine-tuned one, so its
            # checkpoints compete among themselves (the frozen ones stay in the logged curve).
            stopper.reset()
        out = task(sampler.next(device, encoded if fine_tuning else 0))
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step(max_norm=1.0)
        losses.append(out.loss.item())
        if on_step is not None and (step % 10 == 0 or step == steps - 1):
            logged = {"train_loss": losses[-1], "temperature": model.temperature.item()}
            if out.encoder_loss is not None:
                logged["encoder_loss"] = out.encoder_loss.item()
            for kind, value in (out.text_losses or {}).items():
                logged[f"{kind}_loss"] = value.item()
            on_step(step, logged)
        if not ((cfg.refresh_every > 0 and (step + 1) % cfg.refresh_every == 0) or step + 1 in (frozen, steps)):
            continue
        if fine_tuning:
            # The last state is the one most often kept: all of the catalogue at once, then.
            task.refresh(ranked if cfg.refresh_ranked_only and step + 1 < steps else None)
        if validation is None or not len(validation):
            log.info("loss %.4f; %s", losses[-1], progress.line())
            continue
        metrics = validation_metrics(model, *task.item_vectors(), validation, ks, ranked=ranked)
        if on_step is not None:
            on_step(step, metrics)
        log.info("loss %.4f %s; %s", np.mean(losses[-cfg.refresh_every :]),
                 " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), progress.line())  # fmt: skip
        kept = task.pooled_cache if task.pooled_exact else None  # else encoded again if this state wins
        if stopper.update(metrics, step + 1, model, kept) and step >= frozen:
            stopped_early = True
            log.info("early stop: no gain in %d evaluations; best at step %d", cfg.patience, stopper.best["step"])
            break
    stopper.restore(model)
    if cfg.lora_rank > 0:
        # Checkpoints hold a plain encoder: the adapters are folded into its weights.
        model.item_tower.encoder = model.item_tower.encoder.merge_and_unload()
    if stopper.state is not None and stopper.pooled is None:
        stopper.pooled = task.refresh()  # the kept state was measured on part of the catalogue
    model.eval()
    tail = losses[-max(1, min(50, len(losses))) :]
    report = {
        "train_loss": float(np.mean(tail)),
        "first_loss": float(losses[0]),
        "steps": float(step + 1),
        "best_step": float(stopper.best["step"] if stopper.state is not None else step + 1),
        "kept_warm_start": float(keep_initial and stopper.state is not None and stopper.best["step"] == 0),
        "stopped_early": float(stopped_early),
        "examples": float(len(examples)),
        "epochs": (step + 1) * batch_size / len(examples),
        "train_seconds": time.perf_counter() - started,
        "temperature": model.temperature.item(),
    }
    if stopper.state is not None:
        report.update({k: v for k, v in stopper.best.items() if k.startswith("val_")})
    if not math.isfinite(report["train_loss"]):
        raise FloatingPointError("training diverged: the loss is not finite")
    # Every run ends on a refresh (the last step's, or the best one's), so the cache is exact.
    return report, stopper.pooled if stopper.state is not None else task.pooled_cache


def validation_items(targets: np.ndarray, held_out: np.ndarray, n_items: int, limit: int) -> np.ndarray | None:
    """The catalogue indices validation ranks over when the catalogue has more than ``limit``
    items (None: all of them): the ``limit`` items most often a training target, and every
    held-out item. Past that size, scoring every validation user against the whole catalogue at
    each checkpoint grows with the catalogue (and so does re-encoding it, which
    ``refresh_ranked_only`` limits to these items), while the items that compete for a top 10
    are the popular ones; the numbers are then a little higher than over the whole catalogue,
    and compare checkpoints of one run with each other only."""
    if not limit or n_items <= limit:
        return None
    counts = np.bincount(targets, minlength=n_items)
    return np.union1d(np.argsort(-counts, kind="stable")[:limit], held_out)


@dataclass
class NightlyModels:
    """A night's two models: the one the evaluation measures, and the one that is served."""

    evaluation: TwoTowerModel  # trained on the training side of the split only
    served: TwoTowerModel  # the evaluation model continued on every interaction up to ds
    pooled: torch.Tensor  # [n_items] the shared transformer's outputs for the served documents
    evaluation_pooled: torch.Tensor  # [n_items] ... for the evaluation model's documents
    report: dict[str, float]  # the evaluation model's training summary, then refit.* entries


def fine_tunes_tonight(cfg: TrainSettings, encoder_ds: str | None, ds: str) -> bool:
    """Whether tonight's run fine-tunes the transformer: when there is no warm start whose
    transformer's last fine-tuning night is known (``encoder_ds``), when the cadence is off
    (``finetune_every_days`` 0), or when that night is ``finetune_every_days`` or more before ds.
    A backfill before ``encoder_ds`` never comes here: it does not warm-start."""
    import datetime as dt

    if encoder_ds is None or cfg.finetune_every_days <= 0:
        return True
    age = (dt.date.fromisoformat(ds) - dt.date.fromisoformat(encoder_ds)).days
    return age >= cfg.finetune_every_days


def frozen_encoder_settings(cfg: TrainSettings) -> TrainSettings:
    """A night between fine-tunings: ``frozen_steps`` steps of the heads, ID tables and user tower
    on the warm start's cached transformer outputs, the transformer frozen."""
    return dataclasses.replace(cfg, trainable_layers=0, lora_rank=0, frozen_steps=0, max_steps=cfg.frozen_steps)


def refit_settings(cfg: TrainSettings) -> TrainSettings:
    """The served model's continuation: ``refit_steps`` steps of the heads, ID tables and user
    tower, the transformer frozen (so its outputs, cached once, stay exact and shared)."""
    return dataclasses.replace(cfg, trainable_layers=0, lora_rank=0, frozen_steps=0, max_steps=cfg.refit_steps)


def train_nightly(
    model: TwoTowerModel,
    documents: TokenizedDocuments,
    item_ids: pd.Index,
    train: TrainingData,
    everything: TrainingData,
    cfg: TrainSettings,
    device: torch.device,
    ks: Sequence[int],
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    warm_started: bool = False,
    served_documents: TokenizedDocuments | None = None,
    text_pairs: tuple[dict[str, SearchPairs], dict[str, SearchPairs]] = ({}, {}),
    pooled: tuple[torch.Tensor, torch.Tensor] | None = None,
    side: torch.Tensor | None = None,
) -> NightlyModels:
    """Train the evaluation model on ``train`` (early stopping on its validation events), then
    continue a copy of it on ``everything`` with ID tables over every item that has interactions:
    evaluation never scores a model on its own training data, and what is served has learned
    from all of it (the same recipe, ``train.refit_steps`` more steps).

    ``documents`` are what the evaluation model reads (the search evaluation's held-out tags
    left out), ``served_documents`` the whole item documents the served model continues on (None:
    the same); ``text_pairs``: the (evaluation, served) models' text pairs. ``pooled``: the
    transformer's outputs as training starts, when they are known (from the encoder-output cache):
    for (``documents``,) when ``cfg`` fine-tunes it, for (``documents``, ``served_documents``)
    when it stays frozen: then it never runs on them at all.
    ``side``: the items' side vectors, for a model that takes them (both models read the same)."""
    frozen = cfg.trainable_layers == 0 and cfg.lora_rank <= 0
    if pooled is not None and len(pooled) != (2 if frozen else 1):
        raise ValueError("known transformer outputs: two frames for a frozen transformer, one for a fine-tuned one")
    report, evaluation_pooled = train_two_tower(
        model, documents, model.id_rows(item_ids), train.examples, cfg, device, train.validation, on_step, ks=ks,
        keep_initial=warm_started, text_pairs=text_pairs[0], pooled=None if pooled is None else pooled[0], side=side,
    )  # fmt: skip
    if pooled is not None and frozen:
        pooled = pooled[1]
    else:
        pooled = evaluation_pooled
        if served_documents is not None and served_documents is not documents:
            pooled = _served_outputs(model, documents, served_documents, evaluation_pooled, cfg, device)
    if cfg.refit_steps <= 0 or len(everything.examples) < 2:
        return NightlyModels(model, model, pooled, evaluation_pooled, report)
    # The copy shares the transformer with the evaluation model: the refit leaves it frozen.
    served = model.with_id_vocab(everything.id_vocab)
    served_documents = documents if served_documents is None else served_documents
    refit, _ = train_two_tower(
        served, served_documents, served.id_rows(item_ids), everything.examples, refit_settings(cfg), device,
        pooled=pooled, ks=ks, text_pairs=text_pairs[1], side=side,
    )  # fmt: skip
    report |= {f"refit.{k}": refit[k] for k in ("train_loss", "first_loss", "steps", "epochs", "train_seconds")}
    report |= {"refit.id_vocab": float(len(everything.id_vocab))}
    return NightlyModels(model, served, pooled, evaluation_pooled, report)


def _served_outputs(model, documents, served_documents, evaluation_pooled, cfg: TrainSettings, device):
    """The transformer's outputs for the served documents: the evaluation documents' where the
    two read the same (most items: they differ only by the search evaluation's held-out tags),
    the transformer run for the rest."""
    differs = (documents.input_ids != served_documents.input_ids).any(1)
    differs |= (documents.attention_mask != served_documents.attention_mask).any(1)
    pooled = evaluation_pooled.clone()
    rows = torch.nonzero(differs).flatten()
    if len(rows):
        changed = TokenizedDocuments(served_documents.input_ids[rows], served_documents.attention_mask[rows])
        bf16 = cpu_bf16(cfg.cpu_precision, device)
        pooled[rows.to(pooled.device)] = embed_text(model, changed, max(256, cfg.batch_size), device, pooled=True,
                                                    cpu_bf16=bf16).to(pooled.device)  # fmt: skip
    return pooled


def _add_lora(model: TwoTowerModel, rank: int) -> None:
    """Fine-tune the encoder through low-rank adapters on its attention (peft's defaults per
    architecture); the base weights stay frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05)
    model.item_tower.encoder = get_peft_model(model.item_tower.encoder, config)


def initial_model(
    cfg: ModelSettings, train: TrainSettings, id_vocab: pd.Index, champion: Path | None = None, side_dim: int = 0
) -> tuple[TwoTowerModel, object, bool]:
    """(model, tokenizer, warm_started): the champion's checkpoint with its ID tables grown to
    ``id_vocab`` when it loads and has this architecture (``side_dim``: the width of the items'
    side vectors tonight, 0 for none), else a fresh model around the pretrained encoder
    ``cfg.encoder``."""
    if champion is not None:
        try:
            model, tokenizer = TwoTowerModel.load(champion)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("cannot warm-start from %s (%s); training from the pretrained encoder", champion, e)
        else:
            wanted = (cfg.encoder, cfg.history_length, cfg.user_layers, side_dim)
            config = model.config
            if (config.base_encoder, config.history_length, config.user_layers, config.side_dim) == wanted:
                return model.with_id_vocab(id_vocab), tokenizer, True
            log.info("the champion has another architecture; training from the pretrained encoder")
    model, tokenizer = TwoTowerModel.from_encoder(
        cfg.encoder,
        cfg.history_length,
        cfg.max_length,
        train.temperature,
        id_vocab=id_vocab,
        user_layers=cfg.user_layers,
        seed=train.seed,
        side_dim=side_dim,
    )
    return model, tokenizer, False


def training_fingerprint(frames: Sequence[pd.DataFrame], settings: Settings) -> str:
    """Hash of everything that determines the trained models: the data frames, model and train
    settings, and the code (a rerun with the same fingerprint reuses the finished run; a new
    release trains anew, where a retry of the same one does not)."""
    h = hashlib.sha256(_code_digest().encode())
    for frame in frames:
        rows = np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy())
        h.update(rows.tobytes())
    config = {
        "model": dataclasses.asdict(settings.model),
        "train": dataclasses.asdict(settings.train),
        "features": dataclasses.asdict(settings.features),
    }
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:16]


@functools.cache
def _code_digest() -> str:
    """sha256 of the Python source of the recsys_lib and jobs packages (the stages that assemble
    training live in jobs): in a checkout or an installed wheel alike, uncommitted edits included."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for path in sorted(p for package in ("recsys_lib", "jobs") for p in (root / package).rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()

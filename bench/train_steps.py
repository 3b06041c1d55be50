"""Training steps on cached encoder outputs, by catalogue size: the ID tables' sparse gradients
and lazy Adam (the default) against dense gradients and AdamW over whole tables (the design
before), in one run on the same seeded data.

These are the steps of the frozen phase, the served model's refit and every night between
fine-tunings (no transformer pass): at 100k items and more a dense step's cost is the ID
tables' gradient and update, which grow with the catalogue, not with the batch.

    python -m bench.train_steps --items 10000 100000 1000000 --steps 40

Prints one row per (items, variant): steps/s, seconds per step and the peak resident memory of
the process so far. Not run in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import numpy as np
import pandas as pd
import torch

DIM, HISTORY = 384, 50


class _DenseOptimizer:
    """The design before: AdamW over every parameter, ID tables included, torch's clipping."""

    def __init__(self, model, cfg):
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.adamw = torch.optim.AdamW(self.parameters, lr=cfg.head_learning_rate, weight_decay=0.0)

    def zero_grad(self) -> None:
        self.adamw.zero_grad(set_to_none=True)

    def step(self, max_norm: float = 1.0) -> None:
        torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)
        self.adamw.step()


def _model(n_items: int, sparse: bool):
    from transformers import BertConfig, BertModel

    from recsys_lib.models.two_tower import TwoTowerConfig, TwoTowerModel

    # The transformer never runs here (its outputs are given): a one-layer stand-in of MiniLM's width.
    encoder = BertModel(BertConfig(vocab_size=128, hidden_size=DIM, num_hidden_layers=1, num_attention_heads=4,
                                   intermediate_size=64))  # fmt: skip
    config = TwoTowerConfig(DIM, HISTORY, 32, 0.05, "random", user_layers=0)
    model = TwoTowerModel(encoder, config, pd.Index([f"i{k}" for k in range(n_items)], dtype=object))
    if not sparse:
        tower = model.item_tower
        for name in ("id_embedding", "id_bias"):
            table = getattr(tower, name)
            dense = torch.nn.Embedding(*table.weight.shape)
            dense.weight.data.copy_(table.weight.data)
            setattr(tower, name, dense)
    return model


def _examples(n_items: int, n_examples: int, seed: int):
    """Histories and next items drawn from a Zipf-like popularity, as real catalogues are."""
    from recsys_lib.models.examples import TrainingExamples

    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    draws = rng.choice(n_items, size=(n_examples, HISTORY + 1), p=popularity).astype(np.int32)
    return TrainingExamples(history=draws[:, :HISTORY], target=draws[:, HISTORY].astype(np.int64))


def measure(n_items: int, steps: int, sparse: bool, seed: int = 0) -> dict:
    import recsys_lib.models.training as training
    from recsys_lib.models.two_tower import TokenizedDocuments
    from recsys_lib.settings import load_settings

    cfg = dataclasses.replace(load_settings().train, frozen_steps=0, max_steps=steps, trainable_layers=0,
                              refresh_every=0, refit_steps=0)  # fmt: skip
    torch.manual_seed(seed)
    model = _model(n_items, sparse)
    pooled = torch.nn.functional.normalize(torch.randn(n_items, DIM), dim=-1)
    documents = TokenizedDocuments(torch.zeros(n_items, 2, dtype=torch.long), torch.ones(n_items, 2, dtype=torch.long))
    examples = _examples(n_items, max(20_000, 256 * steps), seed)
    build = training.build_optimizer
    if not sparse:
        training.build_optimizer = lambda model, cfg, *_: _DenseOptimizer(model, cfg)
    try:
        report, _ = training.train_two_tower(model, documents, model.id_rows(model.id_vocab), examples, cfg,
                                             torch.device("cpu"), ks=(10,), pooled=pooled)  # fmt: skip
    finally:
        training.build_optimizer = build
    seconds = report["train_seconds"]
    return {
        "items": n_items,
        "ID tables": "sparse, lazy Adam" if sparse else "dense, AdamW (before)",
        "steps/s": steps / seconds,
        "s/step": seconds / steps,
        "peak MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = [measure(n, args.steps, sparse) for n in args.items for sparse in (True, False)]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
    print(f"({time.perf_counter() - started:.0f} s; {torch.get_num_threads()} torch threads)")


if __name__ == "__main__":
    main()

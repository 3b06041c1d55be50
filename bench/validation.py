"""One validation pass of training (every validation user's held-out item ranked), over the whole
catalogue against over ``train.validation_items`` (the items most often a training target, and
every held-out item), by catalogue size, in one run on the same seeded data.

Training ranks the validation users at every checkpoint (13 times in a default run, and on
every night between fine-tunings): over a million items each pass scores 20,000 users against
all of them.

    python -m bench.validation --items 100000 1000000 --users 20000

Prints one row per (items, ranked over): seconds, the items ranked, and NDCG@10 of a model whose
user vectors lean towards their targets (so that the two measures have something to rank). Not
run in CI.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from bench.train_steps import DIM, HISTORY, _model


def measure(n_items: int, n_users: int, limit: int, seed: int = 0) -> list[dict]:
    from recsys_lib.models.examples import ValidationSet
    from recsys_lib.models.training import validation_items, validation_metrics

    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    draws = rng.choice(n_items, size=(n_users, HISTORY + 1), p=popularity)
    targets = rng.choice(n_items, size=20 * n_users, p=popularity)  # the training targets' counts
    validation = ValidationSet(draws[:, :HISTORY], draws[:, HISTORY], [np.unique(h) for h in draws[:, :HISTORY]])
    torch.manual_seed(seed)
    model = _model(n_items, sparse=True).eval()
    vectors = torch.nn.functional.normalize(torch.randn(n_items, DIM), dim=-1)
    # History items lean towards their user's target, so the user tower's mean finds it sometimes.
    history = torch.as_tensor(validation.history)
    lean = 0.15 * vectors[validation.target][:, None]
    vectors[history] = torch.nn.functional.normalize(vectors[history] + lean, dim=-1)
    bias = torch.as_tensor(np.log(popularity), dtype=torch.float32) * 0.1
    rows = []
    for ranked in (None, validation_items(targets, validation.target, n_items, limit)):
        started = time.perf_counter()
        metrics = validation_metrics(model, vectors, bias, validation, (10,), ranked=ranked)
        rows.append({
            "items": n_items,
            "ranked over": "the catalogue" if ranked is None else f"validation_items {limit:,}",
            "items ranked": n_items if ranked is None else len(ranked),
            "seconds": time.perf_counter() - started,
            "ndcg@10": metrics["val_ndcg_at_10"],
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--validation-items", type=int, default=100_000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    table = pd.DataFrame([row for n in args.items for row in measure(n, args.users, args.validation_items)])
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.4f}"))
    print(f"({time.perf_counter() - started:.0f} s; {torch.get_num_threads()} torch threads)")


if __name__ == "__main__":
    main()

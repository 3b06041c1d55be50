"""Evaluate (numpy): the candidate model and a popularity baseline on the time-based holdout.

Each user's training-side history is ranked exactly as recommend ranks live users (same index,
same seen-item exclusion, same fallback); the relevant items are the user's held-out items not
already seen in training. Metrics go to the candidate's MLflow run as ``model.<metric>`` and
``popularity.<metric>`` and to ``runs/ds=<ds>/metrics.json``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage

log = logging.getLogger(__name__)


def relevant_items(holdout, users, item_index, seen_idx) -> list[set[int]]:
    """Per user (in ``users`` order): held-out catalogue indices not seen in training."""
    from jobs._common import to_indices
    from recsys_lib.schema import ITEM_COL, USER_COL

    grouped = holdout.groupby(USER_COL)[ITEM_COL].agg(list)
    lists = [grouped.get(u, []) for u in users]
    return [set(idx.tolist()) - set(seen.tolist()) for idx, seen in zip(to_indices(item_index, lists), seen_idx)]


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    import numpy as np
    import torch

    from jobs._common import load_model, open_stage, read_features, read_item_vectors, to_indices
    from jobs.build_index import load_item_index
    from jobs.recommend import index_searcher
    from recsys_lib import recommend as rec
    from recsys_lib.evaluate import ranking_metrics
    from recsys_lib.models.two_tower import embed_users, history_matrix
    from recsys_lib.schema import HISTORY_COL, ITEM_COL, SEEN_COL, USER_COL

    storage, tracker, mv = open_stage(settings, model_version)
    ks = sorted(settings.evaluate.k)
    depth = max(ks)
    item_index, item_vectors = read_item_vectors(storage, ds, mv)
    searcher = index_searcher(load_item_index(storage, ds, mv.version))
    model, _ = load_model(tracker, mv, "cpu")

    histories = read_features(storage, "train_user_histories", ds).sort_values(USER_COL, kind="stable")
    holdout = read_features(storage, "interactions_holdout", ds)
    train = read_features(storage, "interactions_train", ds, columns=[USER_COL, ITEM_COL])
    users = histories[USER_COL].to_numpy()
    seen_idx = to_indices(item_index, histories[SEEN_COL])
    history_idx = to_indices(item_index, histories[HISTORY_COL])
    relevant = relevant_items(holdout, users, item_index, seen_idx)
    # Only users with something left to find are scored.
    scored = [i for i, r in enumerate(relevant) if r]
    relevant = [relevant[i] for i in scored]
    seen_idx = [seen_idx[i] for i in scored]
    history_idx = [history_idx[i] for i in scored]

    popularity = np.zeros(len(item_index))
    counts = train.drop_duplicates().groupby(ITEM_COL).size()
    pos = item_index.get_indexer(counts.index)
    popularity[pos[pos >= 0]] = counts.to_numpy()[pos >= 0]

    matrix = history_matrix(history_idx, model.config.history_length)
    user_vectors = embed_users(model, torch.from_numpy(item_vectors), matrix).numpy()
    batch = settings.recommend.user_batch_size
    _, model_ids, fallback = rec.rank_users(searcher, user_vectors, seen_idx, popularity, depth, batch)
    _, pop_ids = rec.popular_unseen(popularity, seen_idx, depth)

    n_items = len(item_index)
    warm = ~fallback
    results = {
        "model": ranking_metrics(model_ids, relevant, n_items, ks),
        "popularity": ranking_metrics(pop_ids, relevant, n_items, ks),
        "model_warm_users": ranking_metrics(model_ids[warm], [r for r, w in zip(relevant, warm) if w], n_items, ks),
    }
    flat = {f"{name}.{metric}": value for name, metrics in results.items() for metric, value in metrics.items()}
    tracker.log_metrics(mv.run_id, flat)
    key = Storage.run_output("metrics.json", ds)
    storage.work.write_bytes(key, json.dumps({"ds": ds, "model_version": mv.version, **results}, indent=2).encode())
    log.info("evaluation:\n%s", format_table(results, ks))
    return {"ds": ds, "model_version": mv.version, "metrics": storage.work.uri(key), **flat}


def format_table(results: dict[str, dict[str, float]], ks) -> str:
    """One row per ranker, one column per metric."""
    columns = [f"{m}_at_{k}" for k in ks for m in ("recall", "ndcg", "precision", "map", "coverage")]
    header = f"{'ranker':<20}" + "".join(f"{c:>16}" for c in columns) + f"{'users':>8}"
    lines = [header]
    for name, metrics in results.items():
        lines.append(f"{name:<20}" + "".join(f"{metrics[c]:>16.4f}" for c in columns) + f"{int(metrics['users']):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

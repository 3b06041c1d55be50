"""Evaluate: the candidate model against the baselines, on the same split, in the same run.

Warm protocol (time-based holdout): each user's training side is ranked as recommend ranks live
users (same index, same seen-item exclusion, same fallback) over the warm items; relevant items
are the user's held-out items not seen in training. Rankers: the model, most-popular, item-kNN and Spark ALS
(implicit), the last two tuned on the validation events (each user's last training event) and
refit on all training events. Segments: all users, light users (at most 5 training events).
Cold-item protocol: users rank only the cold items (whose every interaction was held out);
rankers: the model (text-only vectors), a TF-IDF content baseline, random; plus the cold items'
share of the model's served lists (cold items allowed) against their share of the catalogue.

Metrics go to the candidate's MLflow run (``<ranker>.<metric>``, ``<ranker>.light.<metric>``,
``cold.<ranker>.<metric>``), the tables to ``evaluation.txt`` there and to
``runs/ds=<ds>/metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from typing import Any

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage

log = logging.getLogger(__name__)
LIGHT_USER_MAX_EVENTS = 5
REPORT_FILE = "evaluation.txt"
# Searched coordinate-wise from the middle values (see recsys_lib.baselines.tune).
KNN_GRID = {"neighbours": [5, 10, 20, 50, 100, 200], "shrink": [0.0, 10.0, 50.0]}
ALS_GRID = {"rank": [32, 64, 128], "reg": [0.01, 0.1, 1.0], "alpha": [5.0, 20.0, 40.0]}


def relevant_items(events, users, item_index, seen_idx) -> list[set[int]]:
    """Per user (in ``users`` order): catalogue indices in ``events`` not seen in training."""
    from jobs._common import to_indices
    from recsys_lib.schema import ITEM_COL, USER_COL

    grouped = events.groupby(USER_COL)[ITEM_COL].agg(list)
    lists = [grouped.get(u, []) for u in users]
    return [set(idx.tolist()) - set(seen.tolist()) for idx, seen in zip(to_indices(item_index, lists), seen_idx)]


def champion_lists(
    settings: Settings, storage: Storage, tracker, champion, ds, item_index, histories, exclude, popularity, depth
):
    """The current champion ranks the same users on the same split, the way recommend would.

    Returns [users, depth] catalogue indices, or None when the champion cannot be loaded (an
    older, incompatible checkpoint): the gate then falls back to the champion's recorded metrics.
    """
    from jobs._common import load_model, read_item_vectors
    from jobs.embed_items import embed_version
    from jobs.recommend import index_searcher, user_queries
    from recsys_lib import recommend as rec
    from recsys_lib.index import build_index
    from recsys_lib.models.two_tower import retrieval_items

    try:
        embed_version(settings, storage, tracker, champion, ds)
        model, _ = load_model(tracker, champion, "cpu")
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("cannot re-evaluate champion %s on this split: %s", champion.label, e)
        return None
    ids, vectors, bias = read_item_vectors(storage, ds, champion)
    if not ids.equals(item_index):
        raise ValueError(f"champion embeddings of {ds} do not cover the same catalogue as the candidate's")
    cfg = settings.index
    searcher = index_searcher(build_index(retrieval_items(vectors, bias), cfg.kind, cfg.hnsw_m, cfg.hnsw_ef_search))
    batch = settings.recommend.user_batch_size
    queries, fallback = user_queries(model, vectors, histories, batch)
    _, lists = rec.rank_users(searcher, queries, exclude, popularity, depth, batch, fallback)
    log.info("re-evaluated champion %s on the split of %s", champion.label, ds)
    return lists


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import torch

    from jobs._common import load_model, open_stage, read_features, read_item_vectors, to_indices
    from jobs.build_index import load_item_index
    from jobs.recommend import index_searcher, user_queries
    from recsys_lib import baselines as bl
    from recsys_lib import recommend as rec
    from recsys_lib.evaluate import cold_item_slice, format_table, ranking_metrics, segment, share_of
    from recsys_lib.models.two_tower import embed_users, history_matrix, retrieval_items, retrieval_users
    from recsys_lib.schema import DOCUMENT_COL, HISTORY_COL, ITEM_COL, SEEN_COL, USER_COL, VALIDATION_COL
    from recsys_lib.spark import get_spark
    from recsys_lib.tracking import CHAMPION

    started = time.perf_counter()
    storage, tracker, mv = open_stage(settings, model_version)
    ks = sorted(settings.evaluate.k)
    depth = max(ks)
    item_index, item_vectors, item_bias = read_item_vectors(storage, ds, mv)
    n_items = len(item_index)
    model, _ = load_model(tracker, mv, "cpu")

    histories = read_features(storage, "train_user_histories", ds).sort_values(USER_COL, kind="stable")
    train = read_features(storage, "interactions_train", ds, columns=[USER_COL, ITEM_COL, VALIDATION_COL])
    holdout = read_features(storage, "interactions_holdout", ds, columns=[USER_COL, ITEM_COL])
    documents = read_features(storage, "item_documents", ds, columns=[ITEM_COL, DOCUMENT_COL]).set_index(ITEM_COL)
    users = histories[USER_COL].to_numpy()
    user_row = pd.Index(users)
    seen_idx = to_indices(item_index, histories[SEEN_COL])
    history_idx = to_indices(item_index, histories[HISTORY_COL])

    # Training matrices over (user row, catalogue index): all training events, and without the
    # validation events (for tuning).
    rows = user_row.get_indexer(train[USER_COL])
    cols = item_index.get_indexer(train[ITEM_COL])
    ok = (rows >= 0) & (cols >= 0)
    is_val = train[VALIDATION_COL].to_numpy(bool) & ok
    full = bl.interaction_matrix(rows[ok], cols[ok], len(users), n_items)
    fit = bl.interaction_matrix(rows[ok & ~is_val], cols[ok & ~is_val], len(users), n_items)
    val_users, val_targets = rows[is_val], cols[is_val]
    val_exclude = [fit[u].indices for u in val_users]
    train_events = np.diff(full.indptr)

    cold_ids = read_features(storage, "cold_items", ds)[ITEM_COL]
    cold_idx = item_index.get_indexer(cold_ids)
    cold_idx = np.sort(cold_idx[cold_idx >= 0])

    # --- warm protocol ---
    # Cold items have no holdout events by construction: every ranker ranks the warm items only
    # (they are evaluated in the cold protocol below), or a model that recommends new items
    # would be penalised for it.
    relevant = relevant_items(holdout, users, item_index, seen_idx)
    scored = np.array([i for i, r in enumerate(relevant) if r], dtype=np.int64)
    relevant = [relevant[i] for i in scored]
    exclude = [np.union1d(seen_idx[i], cold_idx) for i in scored]
    light = train_events[scored] <= LIGHT_USER_MAX_EVENTS

    searcher = index_searcher(load_item_index(storage, ds, mv.version))
    popularity = np.asarray(full.sum(axis=0)).ravel().astype(np.float64)
    batch = settings.recommend.user_batch_size
    queries, fallback = user_queries(model, item_vectors, [history_idx[i] for i in scored], batch)
    _, model_lists = rec.rank_users(searcher, queries, exclude, popularity, depth, batch, fallback)
    lists = {"model": model_lists}
    # What the served lists look like: cold items allowed (their share is reported below).
    _, served_lists = rec.rank_users(
        searcher, queries, [seen_idx[i] for i in scored], popularity, depth, batch, fallback
    )
    champion = tracker.alias(CHAMPION)
    if champion is not None and champion.version != mv.version:
        champion_ranked = champion_lists(
            settings,
            storage,
            tracker,
            champion,
            ds,
            item_index,
            [history_idx[i] for i in scored],
            exclude,
            popularity,
            depth,
        )
        if champion_ranked is not None:
            lists["champion"] = champion_ranked
    tuned: dict[str, dict] = {}
    spark = get_spark(settings, "recsys-evaluate")
    candidates = {
        "popularity": (lambda: bl.MostPopular(), None),
        "item_knn": (bl.ItemKNN, KNN_GRID),
        "als": (partial(bl.ALS, spark, seed=settings.evaluate.seed), ALS_GRID),
    }
    for name, (make, grid) in candidates.items():
        t0 = time.perf_counter()
        params = {}
        if grid is not None:
            params, _ = bl.tune(make, grid, fit, val_users, val_targets, val_exclude)
            tuned[name] = params
        ranker = make(**params).fit(full)
        lists[name] = bl.rank_users(ranker, scored, exclude, depth)
        log.info("%s %s ranked in %.1fs", name, params or "", time.perf_counter() - t0)

    results = {name: ranking_metrics(lst, relevant, n_items, ks) for name, lst in lists.items()}
    light_results = {}
    if light.any():  # an empty segment reports nothing rather than zeros
        light_results = {
            name: ranking_metrics(*segment(lst, relevant, light), n_items, ks) for name, lst in lists.items()
        }

    # --- cold-item protocol ---
    cold_results: dict[str, dict[str, float]] = {}
    cold_users = 0
    if len(cold_idx) > 10:
        cold_events = read_features(storage, "interactions_cold", ds, columns=[USER_COL, ITEM_COL])
        position = pd.Series(np.arange(len(cold_idx)), index=cold_idx)
        per_user = relevant_items(cold_events, users, item_index, [np.empty(0, np.int64)] * len(users))
        cold_rows = np.array([i for i, r in enumerate(per_user) if r and len(history_idx[i])], dtype=np.int64)
        cold_relevant = [set(position[list(per_user[i])].tolist()) for i in cold_rows]
        cold_users = len(cold_rows)
        if cold_users:
            cold_histories = history_matrix([history_idx[i] for i in cold_rows], model.config.history_length)
            cold_users_vectors = embed_users(model, torch.from_numpy(item_vectors), cold_histories).numpy()
            cold_queries = retrieval_users(cold_users_vectors, model.temperature.item())
            content = bl.TfidfContent(documents.loc[item_index, DOCUMENT_COL].tolist()).fit(full)
            random_scores = np.random.default_rng(settings.evaluate.seed).random((cold_users, len(cold_idx)))
            scores = {
                "model": cold_queries @ retrieval_items(item_vectors[cold_idx], item_bias[cold_idx]).T,
                "tfidf": content.scores_for_histories([history_idx[i] for i in cold_rows], items=cold_idx),
                "random": random_scores,
            }
            cold_results = {name: cold_item_slice(s, cold_relevant, 10) for name, s in scores.items()}
        share = f"share_in_top_{depth}"
        cold_results.setdefault("model", {})[share] = share_of(served_lists, set(cold_idx.tolist()))
        cold_results["catalogue"] = {share: len(cold_idx) / n_items}

    flat = {f"{name}.{k}": v for name, m in results.items() for k, v in m.items()}
    flat |= {f"{name}.light.{k}": v for name, m in light_results.items() for k, v in m.items()}
    flat |= {f"cold.{name}.{k}": v for name, m in cold_results.items() for k, v in m.items()}
    flat["evaluate.seconds"] = time.perf_counter() - started
    tracker.log_metrics(mv.run_id, flat)
    tracker.set_tags(mv.run_id, {f"baseline.{name}": json.dumps(p) for name, p in tuned.items()})

    columns = [f"{m}_at_{k}" for k in ks for m in ("recall", "ndcg")] + [
        f"{m}_at_{ks[0]}" for m in ("map", "precision", "coverage")
    ]
    light_title = f"light users, <= {LIGHT_USER_MAX_EVENTS} training events (n={int(light.sum())})"
    cold_title = f"cold items (n={len(cold_idx)}, users={cold_users})"
    report = "\n\n".join(
        [
            format_table(results, columns + ["users"], f"all users (n={len(scored)})"),
            format_table(light_results, columns + ["users"], light_title) if light_results else light_title + ": none",
            format_table(cold_results, ["recall_at_10", "ndcg_at_10", f"share_in_top_{depth}"], cold_title)
            if cold_results
            else cold_title + ": too few cold items for this protocol (features.cold_item_fraction)",
        ]
    )
    tracker.client.log_text(mv.run_id, report, "evaluation.txt")
    payload = {
        "ds": ds,
        "model_version": mv.version,
        "all_users": results,
        "light_users": light_results,
        "cold_items": cold_results,
        "tuned": tuned,
    }
    key = Storage.run_output("metrics.json", ds)
    storage.work.write_bytes(key, json.dumps(payload, indent=2).encode())
    storage.work.write_bytes(Storage.run_output(REPORT_FILE, ds), f"{mv.label}, ds {ds}\n\n{report}\n".encode())
    best = max((n for n in results if n not in ("model", "champion")), key=lambda n: results[n][f"ndcg_at_{ks[0]}"])
    log.info(
        "%s ndcg@%d %.4f, best baseline %s %.4f; the whole table: %s",
        mv.label,
        ks[0],
        results["model"][f"ndcg_at_{ks[0]}"],
        best,
        results[best][f"ndcg_at_{ks[0]}"],
        storage.work.uri(Storage.run_output(REPORT_FILE, ds)),
    )
    return {
        "ds": ds,
        "model_version": mv.version,
        "metrics": storage.work.uri(key),
        "report": report,
        **{k: v for k, v in flat.items() if k.count(".") == 1},
    }


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

"""Ranker variants on one trained model: each refitted on the validation events, scored on the holdout.

Reads a finished ``recsys benchmark`` data root (its candidate version's evaluation model, its
features), fits the ranker once per variant of the ``[rank]`` settings exactly as train does, and
prints NDCG@10 / Recall@10 over every user with a held-out item: the retrieval order first, then
each variant with its cross-validated check. Seconds per variant, not a training run per variant.

    python -m bench.ranker --data-root var/benchmarks/random_item-XXXX --protocol random_item \\
        --holdout-fraction 0.25 --ds 1998-04-22 num_leaves=7,knn_neighbours=0 num_leaves=3

Not run in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import pandas as pd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="a recsys benchmark data root")
    parser.add_argument("--protocol", required=True, choices=["user_chrono", "global_time", "random_item"])
    parser.add_argument("--holdout-fraction", type=float, required=True)
    parser.add_argument("--ds", required=True)
    parser.add_argument("--keep-cold-items", action="store_true", help="as the benchmark was run")
    parser.add_argument("variants", nargs="*", metavar="KEY=VALUE[,KEY=VALUE]", help="[rank] settings per variant")
    args = parser.parse_args(argv)

    from jobs.evaluate import _evaluation_retriever
    from recsys_lib.evaluation.metrics import ranking_metrics
    from recsys_lib.evaluation.protocols import EvaluationSplit, Ranking, ranked_lists
    from recsys_lib.models.examples import prepare_training_data
    from recsys_lib.ranker import EventLog, features_at_end_of_ds, fit_ranker, retrieve
    from recsys_lib.rules import first_categories
    from recsys_lib.schema import (
        CATEGORIES_COL,
        DOCUMENT_COL,
        ITEM_COL,
        TIMESTAMP_COL,
        USER_COL,
        VALIDATION_COL,
        day_end_seconds,
    )
    from recsys_lib.settings import load_settings
    from recsys_lib.storage import FeatureTable, Storage
    from recsys_lib.tracking import Tracker

    overrides = {"features.split": args.protocol, "features.holdout_fraction": args.holdout_fraction}
    if not args.keep_cold_items:
        overrides["features.cold_item_fraction"] = 0.0
    settings = load_settings(overrides=overrides, env={**os.environ, "RECSYS_DATA_ROOT": args.data_root})
    storage, tracker = Storage(settings), Tracker(settings)
    retriever, _ = _evaluation_retriever(settings, storage, tracker, tracker.resolve(None), args.ds)
    item_ids = retriever.items.ids
    train = storage.read_features(FeatureTable.INTERACTIONS_TRAIN, args.ds)
    events = [USER_COL, ITEM_COL, TIMESTAMP_COL]
    holdout = storage.read_features(FeatureTable.INTERACTIONS_HOLDOUT, args.ds, columns=events)
    documents = storage.read_features(FeatureTable.EVALUATION_DOCUMENTS, args.ds,
                                      columns=[ITEM_COL, DOCUMENT_COL, CATEGORIES_COL])  # fmt: skip
    split = EvaluationSplit.from_frames(
        item_ids, storage.read_features(FeatureTable.TRAIN_USER_HISTORIES, args.ds), train, holdout,
        storage.read_features(FeatureTable.COLD_ITEMS, args.ds),
        storage.read_features(FeatureTable.INTERACTIONS_COLD, args.ds, columns=[USER_COL, ITEM_COL]), documents,
    )  # fmt: skip
    at_end = features_at_end_of_ds(args.protocol)
    if at_end:
        cut_off = pd.Series(day_end_seconds(args.ds), index=split.users)
    else:
        cut_off = holdout.groupby(USER_COL)[TIMESTAMP_COL].min().reindex(split.users).fillna(2**31 - 1)
    categories = first_categories(documents, item_ids)
    ranking = Ranking(categories, EventLog.from_frame(train, item_ids), cut_off.to_numpy(np.int64),
                      split.history_idx, train[[USER_COL, ITEM_COL]])  # fmt: skip
    rows = np.flatnonzero([len(h) > 0 for h in split.holdout])
    relevant = [split.holdout[r] for r in rows]
    exclude = [split.seen_idx[r] for r in rows]

    def report(name: str, lists: np.ndarray) -> None:
        m = ranking_metrics(lists, relevant, split.n_items, [10])
        print(f"{name:<90} ndcg@10 {m['ndcg_at_10']:.4f}  recall@10 {m['recall_at_10']:.4f}", flush=True)

    print(f"{len(rows)} users with held-out items, {args.protocol}, {args.data_root}")
    _, ids = retrieve(retriever, [split.history_idx[r] for r in rows], exclude, 20)
    report("retrieval alone", ids)
    cfg = settings.train
    validation = prepare_training_data(item_ids, train, settings.model.history_length, cfg.max_validation_users,
                                       cfg.seed, 0.0, cfg.profile_share).ranking  # fmt: skip
    if at_end:
        validation = dataclasses.replace(validation, time=np.full(len(validation), day_end_seconds(args.ds)))
    pairs = train.loc[~train[VALIDATION_COL], [USER_COL, ITEM_COL]]
    fallback = np.full((len(rows), 20), -1)
    for variant in args.variants or [""]:
        changes = dict(kv.split("=", 1) for kv in variant.split(",") if kv)
        rank = dataclasses.replace(settings.rank, **{k: type(getattr(settings.rank, k))(v) for k, v in changes.items()})
        ranker = fit_ranker(retriever, categories, train[[ITEM_COL, TIMESTAMP_COL]], pairs, validation, rank,
                            settings.evaluate.primary_k, cfg.seed)  # fmt: skip
        if ranker is None:
            print(f"{variant or 'defaults':<40} no ranker (too few users)")
            continue
        scores = ranker.check
        check = (f"{ranker.prior or 'no prior'}, {ranker.rounds} rounds; check {scores['retrieval_ndcg']:.4f} -> "
                 f"{scores['ranker_ndcg']:.4f} on {scores['users']}")  # fmt: skip
        lists = ranked_lists(retriever, ranker, ranking, rows, exclude, fallback, 20)
        report(f"{variant or 'defaults'} ({check})", lists)


if __name__ == "__main__":
    main()

"""Evaluate: the candidate model against the champion and the baselines, on the same split.

Measures evaluation models only, never a model on its own training data: the candidate's
evaluation model (trained on the split's training side; the served model is its continuation on
everything) and the champion's (trained on an earlier, smaller training side, so today's holdout
is unseen to it too). Each ranks the training side of every holdout user the way recommend ranks
live users, over today's catalogue; tuned baselines (most-popular, item-kNN, Spark ALS) rank
the same users; then the cold-item protocol. The protocols are
``recsys_lib.evaluation.protocols``. Writes the typed report to ``runs/ds=<ds>/evaluation.json``
(and a text table beside it) and to the candidate's MLflow run.
"""

from __future__ import annotations

import logging
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from recsys_lib.evaluation.protocols import EvaluationSplit, Ranking, baselines, evaluate_candidate
    from recsys_lib.ranker import EventLog, features_at_end_of_ds
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
    from recsys_lib.spark import get_spark
    from recsys_lib.storage import FeatureTable, Storage
    from recsys_lib.tracking import Tracker

    storage, tracker = Storage(settings), Tracker(settings)
    mv = tracker.resolve(model_version)
    candidate = _evaluation_retriever(settings, storage, tracker, mv, ds)
    champion, champion_ranker = _champion_retriever(settings, storage, tracker, mv, ds)
    item_ids = candidate.items.ids
    train = storage.read_features(FeatureTable.INTERACTIONS_TRAIN, ds,
                                  columns=[USER_COL, ITEM_COL, TIMESTAMP_COL, VALIDATION_COL])  # fmt: skip
    holdout = storage.read_features(FeatureTable.INTERACTIONS_HOLDOUT, ds, columns=[USER_COL, ITEM_COL, TIMESTAMP_COL])
    documents = storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds, columns=[ITEM_COL, DOCUMENT_COL, CATEGORIES_COL])
    split = EvaluationSplit.from_frames(
        item_ids,
        storage.read_features(FeatureTable.TRAIN_USER_HISTORIES, ds),
        train,
        holdout,
        storage.read_features(FeatureTable.COLD_ITEMS, ds),
        storage.read_features(FeatureTable.INTERACTIONS_COLD, ds, columns=[USER_COL, ITEM_COL]),
        documents,
    )
    # Each user's cut-off for the ranker's features: their first held-out event on a time split.
    if features_at_end_of_ds(settings.features.split):
        cut_off = pd.Series(day_end_seconds(ds), index=split.users)
    else:
        cut_off = holdout.groupby(USER_COL)[TIMESTAMP_COL].min().reindex(split.users).fillna(2**31 - 1)
    ranking = Ranking(first_categories(documents, item_ids), EventLog.from_frame(train, item_ids),
                      cut_off.to_numpy(np.int64), split.history_idx)  # fmt: skip
    cfg = settings.evaluate
    rankers = baselines(cfg.baselines, lambda: get_spark(settings, "recsys-evaluate"), cfg.seed)
    report = evaluate_candidate(split, candidate, champion, rankers, cfg.k, cfg.seed, ds, mv.label,
                                cfg.tune_baselines, ranking, (tracker.load_ranker(mv), champion_ranker))  # fmt: skip
    location = storage.write_evaluation(report)
    tracker.log_evaluation(mv.run_id, report)
    primary = {name: m[report.primary_metric] for name, m in report.all_users.rankers.items()}
    log.info("%s %s: %s; the whole table: %s", mv.label, report.primary_metric, primary, location)
    return {"ds": ds, "model_version": mv.version, "evaluation": location, report.primary_metric: primary}


def _evaluation_retriever(settings: Settings, storage, tracker, mv, ds: str):
    """A registered version's evaluation model over the catalogue of ds, with an index of its
    own built as ``[index]`` says (vectors through the encoder-output cache: the transformer runs
    only for texts its encoder has not seen)."""
    from recsys_lib.embedding import embed_version
    from recsys_lib.models.two_tower import resolve_device
    from recsys_lib.retrieval import Retriever

    device = resolve_device(settings.embed.device)
    model, tokenizer = tracker.load_model(mv, device, evaluation=True)
    items, _ = embed_version(storage, ds, model, tokenizer, mv.version, settings.embed, device, write=False)
    log.info("evaluating %s (its evaluation model) on the split of %s", mv.label, ds)
    return Retriever.with_index(model.cpu(), items, settings.index, settings.recommend.user_batch_size)


def _champion_retriever(settings: Settings, storage, tracker, candidate, ds: str):
    """(the current champion's evaluation model over today's catalogue, its ranker), to rank the
    candidate's split; (None, None) when there is none, it is the candidate, or it cannot be
    loaded (the gate then uses the champion's recorded evaluation)."""
    from mlflow.exceptions import MlflowException

    from recsys_lib.tracking import CHAMPION

    champion = tracker.alias(CHAMPION)
    if champion is None or champion.version == candidate.version:
        return None, None
    try:
        return _evaluation_retriever(settings, storage, tracker, champion, ds), tracker.load_ranker(champion)
    except (OSError, ValueError, KeyError, TypeError, MlflowException) as e:
        log.warning("cannot re-evaluate champion %s on this split: %s", champion.label, e)
        return None, None


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

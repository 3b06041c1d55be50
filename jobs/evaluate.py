"""Evaluate: the candidate model against the champion and the baselines, on the same split.

Ranks the training side of every holdout user the way recommend ranks live users, with the
candidate, the current champion (re-embedded on today's catalogue, for the quality gate) and
tuned baselines (most-popular, item-kNN, Spark ALS); then the cold-item protocol. The protocols
are ``recsys_lib.evaluation.protocols``. Writes the typed report to
``runs/ds=<ds>/evaluation.json`` (and a text table beside it) and to the candidate's MLflow run.
"""

from __future__ import annotations

import logging
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    from recsys_lib.embedding import ItemVectors
    from recsys_lib.evaluation.protocols import EvaluationSplit, default_baselines, evaluate_candidate
    from recsys_lib.retrieval import Retriever
    from recsys_lib.schema import DOCUMENT_COL, ITEM_COL, USER_COL, VALIDATION_COL
    from recsys_lib.spark import get_spark
    from recsys_lib.storage import FeatureTable, Storage
    from recsys_lib.tracking import Tracker

    storage, tracker = Storage(settings), Tracker(settings)
    mv = tracker.resolve(model_version)
    items = ItemVectors.from_table(storage.read_item_embeddings(ds, mv.version))
    model, _ = tracker.load_model(mv, "cpu")
    candidate = Retriever(model, items, storage.read_index(ds, mv.version), settings.recommend.user_batch_size)
    champion = _champion_retriever(settings, storage, tracker, mv, ds, items)
    split = EvaluationSplit.from_frames(
        items.ids,
        storage.read_features(FeatureTable.TRAIN_USER_HISTORIES, ds),
        storage.read_features(FeatureTable.INTERACTIONS_TRAIN, ds, columns=[USER_COL, ITEM_COL, VALIDATION_COL]),
        storage.read_features(FeatureTable.INTERACTIONS_HOLDOUT, ds, columns=[USER_COL, ITEM_COL]),
        storage.read_features(FeatureTable.COLD_ITEMS, ds),
        storage.read_features(FeatureTable.INTERACTIONS_COLD, ds, columns=[USER_COL, ITEM_COL]),
        storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds, columns=[ITEM_COL, DOCUMENT_COL]),
    )
    cfg = settings.evaluate
    baselines = default_baselines(get_spark(settings, "recsys-evaluate"), cfg.seed)
    report = evaluate_candidate(split, candidate, champion, baselines, cfg.k, cfg.seed, ds, mv.label,
                                cfg.tune_baselines)  # fmt: skip
    location = storage.write_evaluation(report)
    tracker.log_evaluation(mv.run_id, report)
    primary = {name: m[report.primary_metric] for name, m in report.all_users.rankers.items()}
    log.info("%s %s: %s; the whole table: %s", mv.label, report.primary_metric, primary, location)
    return {"ds": ds, "model_version": mv.version, "evaluation": location, report.primary_metric: primary}


def _champion_retriever(settings: Settings, storage, tracker, candidate, ds: str, items):
    """The current champion over today's catalogue (re-embedded, with an index of its own), to
    rank the candidate's split; None when there is none, it is the candidate, or its checkpoint
    cannot be loaded (the gate then uses the champion's recorded evaluation)."""
    from recsys_lib.embedding import embed_version
    from recsys_lib.index import build_index
    from recsys_lib.models.two_tower import resolve_device
    from recsys_lib.retrieval import Retriever, retrieval_items
    from recsys_lib.tracking import CHAMPION

    champion = tracker.alias(CHAMPION)
    if champion is None or champion.version == candidate.version:
        return None
    device = resolve_device(settings.embed.device)
    try:
        model, tokenizer = tracker.load_model(champion, device)
        vectors, _ = embed_version(storage, ds, model, tokenizer, champion.version, settings.embed, device)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("cannot re-evaluate champion %s on this split: %s", champion.label, e)
        return None
    if not vectors.ids.equals(items.ids):
        raise ValueError(f"champion embeddings of {ds} do not cover the same catalogue as the candidate's")
    index = build_index(retrieval_items(vectors.vectors, vectors.bias), settings.index)
    log.info("re-evaluating champion %s on the split of %s", champion.label, ds)
    return Retriever(model.cpu(), vectors, index, settings.recommend.user_batch_size)


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

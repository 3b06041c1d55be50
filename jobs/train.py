"""Train (torch + transformers): fine-tune the two-tower model, log it to MLflow, register it.

Reads ``features/ds=<ds>/{item_documents, interactions_train, interactions_all}``. Trains the
evaluation model on the split's training side (warm-started from the champion's evaluation
model), then continues it on every interaction up to ds into the served model
(``recsys_lib.models.training.train_nightly``). Both go to one MLflow run;
the served model is the registered version, with the alias ``candidate``; publish decides
whether it becomes ``champion``. Warm-starts from the current champion unless
``train.full_retrain`` is set. The transformer's outputs for the catalogue go to the
encoder-output cache, so embed and evaluate run no transformer pass for them. A rerun with the
same data and settings reuses the finished run instead of training again.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from recsys_lib.embedding import EncoderOutputs
    from recsys_lib.models.examples import prepare_serving_data, prepare_training_data
    from recsys_lib.models.training import initial_model, train_nightly, training_fingerprint
    from recsys_lib.models.two_tower import TokenizedDocuments, resolve_device
    from recsys_lib.ranker import features_at_end_of_ds
    from recsys_lib.schema import (
        CONTENT_HASH_COL,
        DOCUMENT_COL,
        ITEM_COL,
        TIMESTAMP_COL,
        USER_COL,
        VALIDATION_COL,
        day_end_seconds,
    )
    from recsys_lib.storage import FeatureTable, Storage
    from recsys_lib.tracking import (
        CANDIDATE,
        CHAMPION,
        EVALUATION_MODEL_ARTIFACT,
        MODEL_ARTIFACT,
        RANKER_ARTIFACT,
        Tracker,
    )

    storage, tracker = Storage(settings), Tracker(settings)
    cfg = settings.train
    documents = storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds).sort_values(ITEM_COL, kind="stable")
    documents = documents.reset_index(drop=True)
    interactions = storage.read_features(FeatureTable.INTERACTIONS_TRAIN, ds)
    all_interactions = storage.read_features(FeatureTable.INTERACTIONS_ALL, ds)
    events = [USER_COL, ITEM_COL, TIMESTAMP_COL]
    fingerprint = training_fingerprint(
        [documents[[ITEM_COL, CONTENT_HASH_COL]], interactions[events + [VALIDATION_COL]], all_interactions[events]],
        settings,
    )
    tags = {"ds": ds, "stage": "train", "fingerprint": fingerprint}
    previous = tracker.find_finished_run(tags)
    if previous is not None and (mv := tracker.version_for_run(previous)) is not None:
        log.info("reusing run %s (model %s): same data and settings already trained", previous, mv.label)
        tracker.set_alias(CANDIDATE, mv.version)
        return {"ds": ds, "run_id": previous, "model_version": mv.version, "model": mv.label, "reused": True}

    item_ids = pd.Index(documents[ITEM_COL])
    history_length = settings.model.history_length
    ranking_share = settings.rank.validation_share if settings.rank.enabled else 0.0
    train = prepare_training_data(item_ids, interactions, history_length, cfg.max_validation_users, cfg.seed,
                                  ranking_share, cfg.profile_share)  # fmt: skip
    everything = prepare_serving_data(item_ids, all_interactions, history_length, cfg.profile_share, cfg.seed)
    if features_at_end_of_ds(settings.features.split) and train.ranking is not None:
        moment = np.full(len(train.ranking), day_end_seconds(ds), dtype=np.int64)
        train = dataclasses.replace(train, ranking=dataclasses.replace(train.ranking, time=moment))
    n_interactions = len(interactions)
    # The ranker's event log: the whole training side, validation events included (each feature
    # counts strictly earlier events, so no event sees itself), as evaluate and recommend count.
    ranker_events = interactions[[ITEM_COL, TIMESTAMP_COL]]
    del interactions, all_interactions  # the examples hold what training needs: gigabytes at scale
    champion = None if cfg.full_retrain else tracker.alias(CHAMPION)
    if champion is not None and champion.tags.get("ds", "") > ds:
        # A backfill: the champion learned from days after ds, and its evaluation split's
        # holdout may be in tonight's training side. Start from the pretrained encoder.
        log.info("champion %s was trained for %s, after %s: not warm-starting from it", champion.label,
                 champion.tags["ds"], ds)  # fmt: skip
        champion = None
    model, tokenizer, warm_started = initial_model(settings.model, cfg, train.id_vocab, _warm_start(tracker, champion))
    warm_start = champion.label if warm_started else "none"
    docs = TokenizedDocuments.from_texts(tokenizer, documents[DOCUMENT_COL].tolist(), model.config.max_length)
    device = resolve_device(cfg.device)

    run_id = tracker.start_run(f"train {ds}", {**tags, "warm_start": warm_start, "device": device.type})
    try:
        tracker.log_params(run_id, {
            **{f"train.{k}": v for k, v in dataclasses.asdict(cfg).items()},
            **{f"model.{k}": v for k, v in dataclasses.asdict(model.config).items()},
            "data.ds": ds, "data.items": len(item_ids), "data.train_interactions": n_interactions,
            "data.examples": len(train.examples), "data.validation_users": len(train.validation),
            "data.id_vocab": len(train.id_vocab), "data.all_examples": len(everything.examples),
        })  # fmt: skip
        models = train_nightly(model, docs, item_ids, train, everything, cfg, device, settings.evaluate.k,
                               on_step=lambda step, m: tracker.log_metrics(run_id, m, step),
                               warm_started=warm_started)  # fmt: skip
        ranker = _fit_ranker(settings, models, item_ids, documents, ranker_events, train.ranking, device)
        tracker.log_metrics(run_id, models.report | _ranker_metrics(ranker))
        outputs = EncoderOutputs(pd.Index(documents[CONTENT_HASH_COL]), models.pooled.cpu().numpy()).unique()
        storage.add_encoder_outputs(models.served.encoder_fingerprint(), outputs.to_table())
        with storage.temp_dir() as tmp:
            models.served.save(f"{tmp}/{MODEL_ARTIFACT}", tokenizer)
            models.evaluation.save(f"{tmp}/{EVALUATION_MODEL_ARTIFACT}", tokenizer)
            if ranker is not None:
                ranker.save(f"{tmp}/{RANKER_ARTIFACT}")
            tracker.log_artifacts(run_id, tmp)
        mv = tracker.register_model(run_id, {"ds": ds, "fingerprint": fingerprint})
        tracker.set_alias(CANDIDATE, mv.version)
    except BaseException:
        tracker.finish_run(run_id, "FAILED")
        raise
    tracker.finish_run(run_id)
    return {"ds": ds, "run_id": run_id, "model_version": mv.version, "model": mv.label, "warm_start": warm_start,
            "reused": False, **models.report}  # fmt: skip


def _fit_ranker(settings: Settings, models, item_ids, documents, events, validation, device):
    """The second stage, learned on the evaluation model's candidates for the validation events
    (recsys_lib/ranker.py); None when ranking is off or too few users can teach it."""
    import torch

    from recsys_lib.embedding import ItemVectors
    from recsys_lib.ranker import fit_ranker
    from recsys_lib.retrieval import Retriever
    from recsys_lib.rules import first_categories

    if not settings.rank.enabled or validation is None or validation.time is None or not len(validation):
        return None
    model = models.evaluation.cpu()
    vectors, bias = model.items_from_pooled(models.pooled.cpu(), torch.as_tensor(model.id_rows(item_ids)))
    items = ItemVectors(item_ids, vectors.numpy(), bias.numpy())
    retriever = Retriever.with_index(model, items, settings.index, settings.recommend.user_batch_size)
    ranker = fit_ranker(retriever, first_categories(documents, item_ids), events, validation, settings.rank,
                        settings.evaluate.primary_k, settings.train.seed)  # fmt: skip
    model.to(device)
    return ranker


def _ranker_metrics(ranker) -> dict[str, float]:
    if ranker is None:
        return {}
    return {"ranker.used": float(ranker.use), **{f"ranker.{k}": float(v) for k, v in ranker.check.items()}}


def _warm_start(tracker, champion):
    """The champion's evaluation model, where tonight's evaluation model starts from: it learned
    only earlier training sides, so tonight's holdout stays unseen. (Starting from the served
    champion would leak the holdout events it continued on into tonight's evaluation.)"""
    from recsys_lib.errors import MissingInput

    if champion is None:
        return None
    try:
        return tracker.download_model(champion.version, evaluation=True)
    except (MissingInput, OSError) as e:
        log.warning("cannot warm-start from champion %s (%s); training from the pretrained encoder", champion.label, e)
        return None


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

"""Train (torch + transformers): fine-tune the two-tower model, log it to MLflow, register it.

Reads ``features/ds=<ds>/{item_documents, interactions_train}``. Warm-starts from the current
champion unless ``train.full_retrain`` is set. The new version gets the alias ``candidate``;
publish decides whether it becomes ``champion``. A rerun with the same data and settings
reuses the finished run instead of training again.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str) -> dict[str, Any]:
    import pandas as pd

    from recsys_lib.models.examples import prepare_training_data
    from recsys_lib.models.training import initial_model, train_two_tower, training_fingerprint
    from recsys_lib.models.two_tower import TokenizedDocuments, resolve_device
    from recsys_lib.schema import CONTENT_HASH_COL, DOCUMENT_COL, ITEM_COL, TIMESTAMP_COL, USER_COL, VALIDATION_COL
    from recsys_lib.storage import FeatureTable, Storage
    from recsys_lib.tracking import CANDIDATE, CHAMPION, MODEL_ARTIFACT, Tracker

    storage, tracker = Storage(settings), Tracker(settings)
    cfg = settings.train
    documents = storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds).sort_values(ITEM_COL, kind="stable")
    documents = documents.reset_index(drop=True)
    interactions = storage.read_features(FeatureTable.INTERACTIONS_TRAIN, ds)
    fingerprint = training_fingerprint(
        documents[[ITEM_COL, CONTENT_HASH_COL]], interactions[[USER_COL, ITEM_COL, TIMESTAMP_COL, VALIDATION_COL]],
        settings,
    )  # fmt: skip
    tags = {"ds": ds, "stage": "train", "fingerprint": fingerprint}
    previous = tracker.find_finished_run(tags)
    if previous is not None and (mv := tracker.version_for_run(previous)) is not None:
        log.info("reusing run %s (model %s): same data and settings already trained", previous, mv.label)
        tracker.set_alias(CANDIDATE, mv.version)
        return {"ds": ds, "run_id": previous, "model_version": mv.version, "model": mv.label, "reused": True}

    item_ids = pd.Index(documents[ITEM_COL])
    data = prepare_training_data(item_ids, interactions, settings.model.history_length, cfg.max_validation_users,
                                 cfg.seed)  # fmt: skip
    n_interactions = len(interactions)
    del interactions  # the examples hold what training needs: gigabytes at scale
    champion = None if cfg.full_retrain else tracker.alias(CHAMPION)
    checkpoint = None
    if champion is not None:
        try:
            checkpoint = tracker.download_model(champion.version)
        except OSError as e:
            log.warning("cannot download champion %s (%s); training from the pretrained encoder", champion.label, e)
    model, tokenizer, warm_started = initial_model(settings.model, cfg, data.id_vocab, checkpoint)
    warm_start = champion.label if warm_started else "none"
    docs = TokenizedDocuments.from_texts(tokenizer, documents[DOCUMENT_COL].tolist(), model.config.max_length)
    device = resolve_device(cfg.device)

    run_id = tracker.start_run(f"train {ds}", {**tags, "warm_start": warm_start, "device": device.type})
    try:
        tracker.log_params(run_id, {
            **{f"train.{k}": v for k, v in dataclasses.asdict(cfg).items()},
            **{f"model.{k}": v for k, v in dataclasses.asdict(model.config).items()},
            "data.ds": ds, "data.items": len(item_ids), "data.train_interactions": n_interactions,
            "data.examples": len(data.examples), "data.validation_users": len(data.validation),
            "data.id_vocab": len(data.id_vocab),
        })  # fmt: skip
        report = train_two_tower(
            model, docs, model.id_rows(item_ids), data.examples, cfg, device, data.validation,
            on_step=lambda step, m: tracker.log_metrics(run_id, m, step), ks=settings.evaluate.k,
        )  # fmt: skip
        tracker.log_metrics(run_id, report)
        with storage.temp_dir() as tmp:
            model.save(tmp, tokenizer)
            tracker.log_artifacts(run_id, tmp, MODEL_ARTIFACT)
        mv = tracker.register_model(run_id, {"ds": ds, "fingerprint": fingerprint})
        tracker.set_alias(CANDIDATE, mv.version)
    except BaseException:
        tracker.finish_run(run_id, "FAILED")
        raise
    tracker.finish_run(run_id)
    return {"ds": ds, "run_id": run_id, "model_version": mv.version, "model": mv.label, "warm_start": warm_start,
            "reused": False, **report}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

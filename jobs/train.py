"""Train (torch + transformers): fine-tune the two-tower model, log it to MLflow, register it.

Reads ``features/ds=<ds>/{item_documents, interactions_train}``. Warm-starts from the current
champion unless ``train.full_retrain`` is set. The new version gets the alias ``candidate``;
publish decides whether it becomes ``champion``. A rerun with the same data and settings
reuses the finished run instead of training again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage

log = logging.getLogger(__name__)


def training_fingerprint(documents, interactions, settings: Settings) -> str:
    """Hash of everything that determines the trained model: data, model and train settings."""
    import numpy as np
    import pandas as pd

    h = hashlib.sha256()
    for frame in (documents, interactions):
        rows = np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy())
        h.update(rows.tobytes())
    config = {
        "model": dataclasses.asdict(settings.model),
        "train": dataclasses.asdict(settings.train),
        "features": dataclasses.asdict(settings.features),
    }
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:16]


def run(settings: Settings, ds: str) -> dict[str, Any]:
    import pandas as pd

    from recsys_lib.logs import quiet_library_logs
    from recsys_lib.models.training import build_examples, build_validation, train_two_tower
    from recsys_lib.models.two_tower import TokenizedDocuments, TwoTowerModel, resolve_device
    from recsys_lib.schema import CONTENT_HASH_COL, DOCUMENT_COL, ITEM_COL, TIMESTAMP_COL, USER_COL, VALIDATION_COL
    from recsys_lib.tracking import CANDIDATE, CHAMPION, MODEL_ARTIFACT, Tracker

    quiet_library_logs()
    storage = Storage(settings)
    tracker = Tracker(settings)
    documents = storage.work.read_table(Storage.features("item_documents", ds)).to_pandas()
    documents = documents.sort_values(ITEM_COL, kind="stable").reset_index(drop=True)
    interactions = storage.work.read_table(Storage.features("interactions_train", ds)).to_pandas()
    fingerprint = training_fingerprint(
        documents[[ITEM_COL, CONTENT_HASH_COL]],
        interactions[[USER_COL, ITEM_COL, TIMESTAMP_COL, VALIDATION_COL]],
        settings,
    )
    tags = {"ds": ds, "stage": "train", "fingerprint": fingerprint}
    previous = tracker.find_finished_run(tags)
    if previous is not None and (mv := tracker.version_for_run(previous)) is not None:
        log.info("reusing run %s (model %s): same data and settings already trained", previous, mv.label)
        tracker.set_alias(CANDIDATE, mv.version)
        return {"ds": ds, "run_id": previous, "model_version": mv.version, "model": mv.label, "reused": True}

    cfg = settings.train
    device = resolve_device(cfg.device)
    item_ids = pd.Index(documents[ITEM_COL])
    train_events, validation_events = build_validation(interactions, item_ids, settings.model.history_length)
    validation_events = validation_events.sample(cfg.max_validation_users, cfg.seed)
    # Warm items get an ID embedding; the rest (cold, new) are known by their text alone.
    id_vocab = pd.Index(sorted(set(train_events[ITEM_COL]) & set(item_ids)), dtype=object)
    champion = None if cfg.full_retrain else tracker.alias(CHAMPION)
    model = tokenizer = None
    warm_start = "none"
    if champion is not None:
        try:
            model, tokenizer = TwoTowerModel.load(tracker.download_model(champion.version))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning(
                "cannot warm-start from champion %s (%s); training from the pretrained encoder", champion.label, e
            )
            champion = None
    if champion is not None:
        wanted = (settings.model.encoder, settings.model.history_length, settings.model.user_layers)
        if (model.config.base_encoder, model.config.history_length, model.config.user_layers) != wanted:
            log.info("champion %s has another architecture; training from the pretrained encoder", champion.label)
            model = tokenizer = None
        else:
            model = model.with_id_vocab(id_vocab)
            warm_start = champion.label
    if model is None:
        model, tokenizer = TwoTowerModel.from_encoder(
            settings.model.encoder,
            settings.model.history_length,
            settings.model.max_length,
            cfg.temperature,
            id_vocab=id_vocab,
            user_layers=settings.model.user_layers,
            seed=cfg.seed,
        )
    docs = TokenizedDocuments.from_texts(tokenizer, documents[DOCUMENT_COL].tolist(), model.config.max_length)
    examples = build_examples(train_events, item_ids, model.config.history_length)
    n_interactions = len(interactions)
    del interactions, train_events  # the examples hold what training needs: gigabytes at scale

    run_id = tracker.start_run(f"train {ds}", {**tags, "warm_start": warm_start, "device": device.type})
    try:
        tracker.log_params(
            run_id,
            {
                **{f"train.{k}": v for k, v in dataclasses.asdict(cfg).items()},
                **{f"model.{k}": v for k, v in dataclasses.asdict(model.config).items()},
                "data.ds": ds,
                "data.items": len(documents),
                "data.train_interactions": n_interactions,
                "data.examples": len(examples),
                "data.validation_users": len(validation_events),
                "data.id_vocab": len(id_vocab),
            },
        )
        report = train_two_tower(
            model,
            docs,
            model.id_rows(item_ids),
            examples,
            cfg,
            device,
            validation=validation_events,
            on_step=lambda step, m: tracker.log_metrics(run_id, m, step),
        )
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
    return {
        "ds": ds,
        "run_id": run_id,
        "model_version": mv.version,
        "model": mv.label,
        "warm_start": warm_start,
        "reused": False,
        **report,
    }


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

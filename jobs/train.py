"""Train (torch + transformers): fine-tune the two-tower model, log it to MLflow, register it.

Reads ``features/ds=<ds>/{item_documents, evaluation_documents, search_pairs, interactions_train,
interactions_all}``. Trains the evaluation model on the split's training side and the evaluation
documents (warm-started from the champion's evaluation model), then continues it on every
interaction up to ds and the whole documents into the served model
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
from pathlib import Path
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import torch

    from recsys_lib.embedding import EncoderOutputs
    from recsys_lib.evaluation.search import check_interests
    from recsys_lib.models.examples import prepare_serving_data, prepare_training_data
    from recsys_lib.models.inference import export_query_encoder
    from recsys_lib.models.train_task import SearchPairs
    from recsys_lib.models.training import (
        fine_tunes_tonight,
        frozen_encoder_settings,
        initial_model,
        train_nightly,
        training_fingerprint,
    )
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
    from recsys_lib.side_vectors import read_side_vectors
    from recsys_lib.storage import FeatureTable, Storage
    from recsys_lib.tracking import (
        CANDIDATE,
        ENCODER_DS_TAG,
        EVALUATION_MODEL_ARTIFACT,
        QUERY_ENCODER_ARTIFACT,
        RANKER_ARTIFACT,
        Tracker,
    )

    storage, tracker = Storage(settings), Tracker(settings)
    cfg = settings.train
    documents, evaluation_documents = (
        storage.read_features(table, ds).sort_values(ITEM_COL, kind="stable").reset_index(drop=True)
        for table in (FeatureTable.ITEM_DOCUMENTS, FeatureTable.EVALUATION_DOCUMENTS)
    )
    if not documents[ITEM_COL].equals(evaluation_documents[ITEM_COL]):
        raise ValueError(f"features of {ds}: evaluation_documents and item_documents list different items")
    pairs = storage.read_features(FeatureTable.SEARCH_PAIRS, ds)
    interactions = storage.read_features(FeatureTable.INTERACTIONS_TRAIN, ds)
    all_interactions = storage.read_features(FeatureTable.INTERACTIONS_ALL, ds)
    events = [USER_COL, ITEM_COL, TIMESTAMP_COL]
    item_ids = pd.Index(documents[ITEM_COL])
    side = read_side_vectors(storage, item_ids, ds)
    fingerprint = training_fingerprint(
        [
            documents[[ITEM_COL, CONTENT_HASH_COL]],
            evaluation_documents[[CONTENT_HASH_COL]],
            pairs,
            interactions[events + [VALIDATION_COL]],
            all_interactions[events],
            *([] if side is None else [pd.DataFrame(side)]),
        ],
        settings,
    )
    tags = {"ds": ds, "stage": "train", "fingerprint": fingerprint}
    previous = tracker.find_finished_run(tags)
    if previous is not None and (mv := tracker.version_for_run(previous)) is not None:
        log.info("reusing run %s (model %s): same data and settings already trained", previous, mv.label)
        tracker.set_alias(CANDIDATE, mv.version)
        return {"ds": ds, "run_id": previous, "model_version": mv.version, "model": mv.label, "reused": True}

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
    # Its item-kNN: only the events the evaluation model trained on (no validation event).
    ranker_pairs = interactions.loc[~interactions[VALIDATION_COL], [USER_COL, ITEM_COL]]
    # No validation event in the interests pairs: a user's words tie all of the user's items
    # together, and would tie the validation item to the rest of the history it is ranked from.
    text_frames = _text_pairs(settings, item_ids, pairs, interactions[~interactions[VALIDATION_COL]], all_interactions)
    served_popularity = _popularity(item_ids, all_interactions.drop_duplicates([USER_COL, ITEM_COL]))
    example_histories = _example_histories(all_interactions)
    del interactions, all_interactions  # the examples hold what training needs: gigabytes at scale
    split = storage.read_split(ds)
    champion = _warm_start_champion(tracker, cfg.full_retrain, ds, split)
    side_dim = 0 if side is None else side.shape[1]
    model, tokenizer, warm_started = initial_model(settings.model, cfg, train.id_vocab, _warm_start(tracker, champion),
                                                   side_dim)  # fmt: skip
    warm_start = champion.label if warm_started else "none"
    # The transformer's cadence: between fine-tuning nights it stays the champion's, frozen.
    encoder_ds = champion.tags.get(ENCODER_DS_TAG) if warm_started else None
    fine_tune = fine_tunes_tonight(cfg, encoder_ds, ds)
    night = cfg if fine_tune else frozen_encoder_settings(cfg)
    encoder_ds = ds if fine_tune else encoder_ds
    max_length = model.config.max_length
    docs = TokenizedDocuments.from_texts(tokenizer, documents[DOCUMENT_COL].tolist(), max_length)
    evaluation_docs = docs
    if not documents[CONTENT_HASH_COL].equals(evaluation_documents[CONTENT_HASH_COL]):
        evaluation_docs = TokenizedDocuments.from_texts(tokenizer, evaluation_documents[DOCUMENT_COL].tolist(),
                                                        max_length)  # fmt: skip
    text_pairs = tuple(
        {kind: SearchPairs.from_frame(frame, item_ids, tokenizer, max_length) for kind, frame in side.items()}
        for side in text_frames
    )
    device = resolve_device(cfg.device)
    # The transformer's outputs as training starts, through the encoder-output cache: the
    # pretrained encoder's on a first night (evaluate's search baseline reads them back), the
    # champion's otherwise, where only new and edited items go through it.
    frames = [evaluation_documents] if fine_tune else [evaluation_documents, documents]
    initial_fingerprint = model.encoder_fingerprint()
    known, new_outputs = _known_outputs(storage, model, initial_fingerprint, tokenizer, frames, cfg, device)
    if not fine_tune:
        log.info("transformer frozen tonight (last fine-tuned for %s, every %d days): %d of %d documents through it",
                 encoder_ds, cfg.finetune_every_days, len(new_outputs), len(documents))  # fmt: skip

    run_id = tracker.start_run(f"train {ds}", {**tags, "warm_start": warm_start, "device": device.type,
                                                 "fine_tuned": str(fine_tune).lower()})  # fmt: skip
    try:
        tracker.log_params(run_id, {
            **{f"train.{k}": v for k, v in dataclasses.asdict(cfg).items()},
            **{f"model.{k}": v for k, v in dataclasses.asdict(model.config).items()},
            "data.ds": ds, "data.items": len(item_ids), "data.train_interactions": n_interactions,
            "data.examples": len(train.examples), "data.validation_users": len(train.validation),
            "data.id_vocab": len(train.id_vocab), "data.all_examples": len(everything.examples),
            "train.encoder_ds": encoder_ds, "data.split": split,
        })  # fmt: skip
        models = train_nightly(model, evaluation_docs, item_ids, train, everything, night, device, settings.evaluate.k,
                               on_step=lambda step, m: tracker.log_metrics(run_id, m, step),
                               warm_started=warm_started, served_documents=docs, text_pairs=text_pairs,
                               pooled=known, side=None if side is None else torch.from_numpy(side))  # fmt: skip
        models.report |= {"fine_tuned": float(fine_tune),
                          "transformer_documents": float(len(new_outputs) if not fine_tune else len(documents))}
        retriever = _evaluation_retriever(settings, storage, models, item_ids, tokenizer, side)
        ranker = _fit_ranker(settings, retriever, documents, ranker_events, ranker_pairs, train.ranking)
        interests = check_interests(retriever, train.validation, pairs, _popularity(item_ids, ranker_events),
                                    settings.evaluate.primary_k, cfg.seed)  # fmt: skip
        models.evaluation.to(device)
        tracker.log_metrics(run_id, models.report | _ranker_metrics(ranker) | interests)
        if fine_tune:  # a new transformer: every document's outputs are new
            if len(new_outputs):  # ... and the starting transformer's, computed above, are kept too
                storage.add_encoder_outputs(initial_fingerprint, new_outputs.to_table())
            hashes = pd.Index(pd.concat([documents[CONTENT_HASH_COL], evaluation_documents[CONTENT_HASH_COL]]))
            pooled = torch.cat([models.pooled, models.evaluation_pooled]).cpu().numpy()
            new_outputs = EncoderOutputs(hashes, pooled).unique()
        if len(new_outputs):  # a night that kept its transformer adds only its new and edited items
            storage.add_encoder_outputs(models.served.encoder_fingerprint(), new_outputs.to_table())
        with storage.temp_dir() as tmp:
            served = _item_vectors(models.served.cpu(), models.pooled, item_ids, side)
            tracker.log_served_model(run_id, models.served, tokenizer, served, served_popularity, settings.index,
                                     example_histories)  # fmt: skip
            models.evaluation.save(f"{tmp}/{EVALUATION_MODEL_ARTIFACT}", tokenizer)
            if ranker is not None:
                ranker.save(f"{tmp}/{RANKER_ARTIFACT}")
            # The query side, registered with the model: what recommend publishes for search.
            export_query_encoder(models.served.cpu(), tokenizer, Path(tmp) / QUERY_ENCODER_ARTIFACT)
            tracker.log_artifacts(run_id, tmp)
        mv = tracker.register_model(run_id, {"ds": ds, "fingerprint": fingerprint, ENCODER_DS_TAG: encoder_ds})
        tracker.set_alias(CANDIDATE, mv.version)
    except BaseException:
        tracker.finish_run(run_id, "FAILED")
        raise
    tracker.finish_run(run_id)
    return {"ds": ds, "run_id": run_id, "model_version": mv.version, "model": mv.label, "warm_start": warm_start,
            "reused": False, "encoder_ds": encoder_ds, **models.report}  # fmt: skip


def _known_outputs(storage, model, fingerprint: str, tokenizer, frames, cfg, device):
    """((each documents frame's pooled transformer outputs, as training starts), those computed
    now): from the encoder-output cache of the model's transformer (``fingerprint``: its
    ``encoder_fingerprint()``, a hash of every weight, computed once), which runs only for
    documents the cache lacks (all of them on a first night; new and edited items after)."""
    import numpy as np
    import torch

    from recsys_lib.embedding import EncoderOutputs, pooled_outputs
    from recsys_lib.models.inference import cpu_bf16
    from recsys_lib.models.two_tower import TokenizedDocuments, embed_text

    bf16, batch = cpu_bf16(cfg.cpu_precision, device), max(256, cfg.batch_size)

    def pool(texts: list[str]) -> np.ndarray:
        docs = TokenizedDocuments.from_texts(tokenizer, texts, model.config.max_length)
        return embed_text(model, docs, batch, device, pooled=True, cpu_bf16=bf16).cpu().numpy()

    known = storage.read_encoder_outputs(fingerprint) or EncoderOutputs.empty(model.config.dim)
    new, outputs = EncoderOutputs.empty(model.config.dim), []
    for documents in frames:
        pooled, computed = pooled_outputs(model, tokenizer, documents, batch, device, known, pool)
        known, new = known.concat(computed), new.concat(computed)
        outputs.append(torch.from_numpy(pooled).to(device))
    return tuple(outputs), new


def _text_pairs(settings: Settings, item_ids, pairs, train_events, all_events):
    """({kind: (query, item_id) frame} of the evaluation model, of the served model): search
    pairs (the evaluation model's without the held-out tags) and interests pairs (the words that
    describe each user's history -> their items; the training side's users for the evaluation
    model, everyone's for the served one; a seeded sample of train.max_validation_users users)."""
    from recsys_lib.models.examples import interest_pairs
    from recsys_lib.models.train_task import INTERESTS, SEARCH
    from recsys_lib.schema import HOLDOUT_COL

    cfg = settings.train
    out = []
    for side_pairs, events in ((pairs, train_events), (pairs.assign(**{HOLDOUT_COL: False}), all_events)):
        kinds = {SEARCH: side_pairs[~side_pairs[HOLDOUT_COL]]}
        if cfg.interests_loss_weight > 0:
            kinds[INTERESTS] = interest_pairs(events, item_ids, side_pairs, cfg.max_validation_users,
                                              settings.features.max_history, cfg.seed)  # fmt: skip
        out.append(kinds)
    return tuple(out)


def _item_vectors(model, pooled, item_ids, side=None):
    """A model's ItemVectors of the catalogue, from the transformer's pooled outputs (and the
    items' side vectors)."""
    import torch

    from recsys_lib.embedding import ItemVectors

    side = None if side is None else torch.from_numpy(side)
    vectors, bias = model.items_from_pooled(pooled.cpu(), torch.as_tensor(model.id_rows(item_ids)), side)
    return ItemVectors(item_ids, vectors.numpy(), bias.numpy())


def _example_histories(events, users: int = 3, length: int = 5) -> list[list[str]]:
    """The latest items of a few users: the served model's input example in MLflow."""
    from recsys_lib.schema import ITEM_COL, TIMESTAMP_COL, USER_COL

    some = events[events[USER_COL].isin(events[USER_COL].drop_duplicates().head(users))]
    latest = some.sort_values([USER_COL, TIMESTAMP_COL], kind="stable").groupby(USER_COL, sort=True).tail(length)
    return [list(map(str, items)) for _, items in latest.groupby(USER_COL, sort=True)[ITEM_COL]]


def _evaluation_retriever(settings: Settings, storage, models, item_ids, tokenizer, side=None):
    """The evaluation model (on the CPU) over its own item vectors, for the checks below."""
    import torch

    from recsys_lib.embedding import CachedTexts
    from recsys_lib.retrieval import Retriever

    model = models.evaluation.cpu()
    items = _item_vectors(model, models.evaluation_pooled, item_ids, side)
    words = CachedTexts(storage, model, tokenizer, settings.embed, torch.device("cpu"))
    return Retriever.with_index(model, items, settings.index, settings.recommend.user_batch_size, tokenizer, words)


def _fit_ranker(settings: Settings, retriever, documents, events, pairs, validation):
    """The second stage, learned on the evaluation model's candidates for the validation events
    (recsys_lib/ranker.py); None when ranking is off or too few users can teach it."""
    from recsys_lib.ranker import fit_ranker
    from recsys_lib.rules import first_categories

    if not settings.rank.enabled or validation is None or validation.time is None or not len(validation):
        return None
    return fit_ranker(retriever, first_categories(documents, retriever.items.ids), events, pairs, validation,
                      settings.rank, settings.evaluate.primary_k, settings.train.seed)  # fmt: skip


def _popularity(item_ids, events):
    """[n_items] training events per catalogue item."""
    import numpy as np

    from recsys_lib.schema import ITEM_COL

    rows = item_ids.get_indexer(events[ITEM_COL])
    return np.bincount(rows[rows >= 0], minlength=len(item_ids)).astype(np.float64)


def _ranker_metrics(ranker) -> dict[str, float]:
    if ranker is None:
        return {}
    return {"ranker.used": float(ranker.use), **{f"ranker.{k}": float(v) for k, v in ranker.check.items()}}


def _warm_start_champion(tracker, full_retrain: bool, ds: str, split: str):
    """The champion tonight's models start from, or None: none with ``full_retrain``, and none
    whose evaluation model may have learned tonight's holdout: one trained for a later ds (a
    backfill), or under another split (user_chrono's training side holds most of global_time's
    holdout)."""
    from recsys_lib.tracking import CHAMPION

    champion = None if full_retrain else tracker.alias(CHAMPION)
    if champion is None:
        return None
    if champion.tags.get("ds", "") > ds:
        log.info("champion %s was trained for %s, after %s: not warm-starting from it", champion.label,
                 champion.tags["ds"], ds)  # fmt: skip
        return None
    trained = tracker.other_split(champion, split)
    if trained:
        log.info("champion %s trained on the %s split, tonight's is %s: not warm-starting from it", champion.label,
                 trained, split)  # fmt: skip
        return None
    return champion


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

"""Evaluate: the candidate model against the champion and the baselines, on the same split.

Measures evaluation models only, never a model on its own training data: the candidate's
evaluation model (trained on the split's training side; the served model is its continuation on
everything) and the champion's (trained on an earlier, smaller training side, so today's holdout
is unseen to it too). Each ranks the training side of every holdout user the way recommend ranks
live users, over today's catalogue; tuned baselines (most-popular, item-kNN, Spark ALS) rank
the same users; then the cold-item protocol and the search protocol (held-out tags as queries:
the model's query path against BM25 and the pretrained encoder). Evaluation models read the
evaluation documents (the held-out tags left out). The protocols are
``recsys_lib.evaluation.protocols`` and ``recsys_lib.evaluation.search``. Writes the typed
report to ``runs/ds=<ds>/evaluation.json`` (and a text table beside it) and to the candidate's
MLflow run.
"""

from __future__ import annotations

import logging
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    import dataclasses

    import numpy as np
    import pandas as pd

    from recsys_lib.evaluation.protocols import EvaluationSplit, Ranking, baselines, evaluate_candidate
    from recsys_lib.evaluation.search import text_user_segment
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
    from recsys_lib.words import DEFAULT_WORDS_L2

    storage, tracker = Storage(settings), Tracker(settings)
    mv = tracker.resolve(model_version)
    candidate, tokenizer = _evaluation_retriever(settings, storage, tracker, mv, ds)
    split_name = storage.read_split(ds)
    champion_split = _champion_split(tracker, mv, split_name)
    champion, champion_ranker = (None, None) if champion_split else _champion_retriever(settings, storage, tracker,
                                                                                        mv, ds)  # fmt: skip
    item_ids = candidate.items.ids
    train = storage.read_features(FeatureTable.INTERACTIONS_TRAIN, ds,
                                  columns=[USER_COL, ITEM_COL, TIMESTAMP_COL, VALIDATION_COL])  # fmt: skip
    holdout = storage.read_features(FeatureTable.INTERACTIONS_HOLDOUT, ds, columns=[USER_COL, ITEM_COL, TIMESTAMP_COL])
    documents = storage.read_features(FeatureTable.EVALUATION_DOCUMENTS, ds,
                                      columns=[ITEM_COL, DOCUMENT_COL, CATEGORIES_COL])  # fmt: skip
    split = EvaluationSplit.from_frames(
        item_ids,
        storage.read_features(FeatureTable.TRAIN_USER_HISTORIES, ds),
        train,
        holdout,
        storage.read_features(FeatureTable.COLD_ITEMS, ds),
        storage.read_features(FeatureTable.INTERACTIONS_COLD, ds, columns=[USER_COL, ITEM_COL]),
        documents,
        max_users=settings.evaluate.max_users,
        seed=settings.evaluate.seed,
    )
    # Each user's cut-off for the ranker's features: their first held-out event on a time split.
    if features_at_end_of_ds(settings.features.split):
        cut_off = pd.Series(day_end_seconds(ds), index=split.users)
    else:
        cut_off = holdout.groupby(USER_COL)[TIMESTAMP_COL].min().reindex(split.users).fillna(2**31 - 1)
    ranking = Ranking(first_categories(documents, item_ids), EventLog.from_frame(train, item_ids),
                      cut_off.to_numpy(np.int64), split.history_idx, train[[USER_COL, ITEM_COL]])  # fmt: skip
    cfg = settings.evaluate
    rankers = baselines(cfg.baselines, lambda: get_spark(settings, "recsys-evaluate"), cfg.seed)
    report = evaluate_candidate(split, candidate, champion, rankers, cfg.k, cfg.seed, ds, mv.label,
                                cfg.tune_baselines, ranking, (tracker.load_ranker(mv), champion_ranker))  # fmt: skip
    pairs = storage.read_features(FeatureTable.SEARCH_PAIRS, ds)
    named = f"all users ({split_name} split, " if split_name else "all users ("
    titled = report.all_users.title.replace("all users (", named)
    report = dataclasses.replace(
        report,
        split=split_name,
        champion_split=champion_split,
        all_users=dataclasses.replace(report.all_users, title=titled),
        search=_search_segment(settings, storage, ds, candidate, tokenizer, split, pairs),
        text_users=text_user_segment(split, candidate, pairs, cfg.k, tracker.run_metrics(mv.run_id).get(
            "interests.l2", DEFAULT_WORDS_L2), cfg.seed),
    )
    location = storage.write_evaluation(report)
    tracker.log_evaluation(mv.run_id, report)
    primary = {name: m[report.primary_metric] for name, m in report.all_users.rankers.items()}
    log.info("%s %s: %s; the whole table: %s", mv.label, report.primary_metric, primary, location)
    return {"ds": ds, "model_version": mv.version, "evaluation": location, report.primary_metric: primary}


def _evaluation_retriever(settings: Settings, storage, tracker, mv, ds: str):
    """(a registered version's evaluation model over the evaluation documents of ds, with an
    index of its own built as ``[index]`` says, its tokenizer). Vectors come through the
    encoder-output cache: the transformer runs only for texts its encoder has not seen."""
    import torch

    from recsys_lib.embedding import CachedTexts, embed_version
    from recsys_lib.models.two_tower import resolve_device
    from recsys_lib.retrieval import Retriever
    from recsys_lib.storage import FeatureTable

    device = resolve_device(settings.embed.device)
    model, tokenizer = tracker.load_model(mv, device, evaluation=True)
    items, _ = embed_version(storage, ds, model, tokenizer, mv.version, settings.embed, device, write=False,
                             table=FeatureTable.EVALUATION_DOCUMENTS)  # fmt: skip
    log.info("evaluating %s (its evaluation model) on the split of %s", mv.label, ds)
    batch_size = settings.recommend.user_batch_size
    model = model.cpu()
    words = CachedTexts(storage, model, tokenizer, settings.embed, torch.device("cpu"))
    return Retriever.with_index(model, items, settings.index, batch_size, tokenizer, words), tokenizer


def _search_segment(settings: Settings, storage, ds: str, candidate, tokenizer, split, pairs):
    """The search protocol: the candidate's query path, BM25 and the pretrained encoder over the
    evaluation documents, most-popular as the floor."""
    import numpy as np

    from recsys_lib.embedding import embed_version
    from recsys_lib.evaluation.search import MIN_QUERIES, SearchQueries, bm25_scorer, search_segment, vector_scorer
    from recsys_lib.models.two_tower import TokenizedDocuments, TwoTowerModel, embed_text, resolve_device
    from recsys_lib.schema import DOCUMENT_COL, ITEM_COL
    from recsys_lib.storage import FeatureTable

    item_ids = candidate.items.ids
    queries = SearchQueries.from_pairs(pairs, item_ids)
    if len(queries) < MIN_QUERIES:
        return search_segment(queries, {}, len(item_ids), settings.evaluate.k)
    device = resolve_device(settings.embed.device)

    def encoder(model, tok):
        def encode(texts: list[str]) -> np.ndarray:
            docs = TokenizedDocuments.from_texts(tok, texts, model.config.max_length)
            return embed_text(model, docs, settings.embed.batch_size, device).cpu().numpy()
        return encode

    documents = storage.read_features(FeatureTable.EVALUATION_DOCUMENTS, ds, columns=[ITEM_COL, DOCUMENT_COL])
    texts = documents.set_index(ITEM_COL)[DOCUMENT_COL].reindex(item_ids).fillna("").tolist()
    cfg = settings.model
    pretrained, pretrained_tokenizer = TwoTowerModel.from_encoder(cfg.encoder, cfg.history_length, cfg.max_length,
                                                                  settings.train.temperature)  # fmt: skip
    pretrained_items, _ = embed_version(
        storage, ds, pretrained.to(device), pretrained_tokenizer, "pretrained", settings.embed, device, write=False,
        table=FeatureTable.EVALUATION_DOCUMENTS,
    )  # fmt: skip
    popularity = split.popularity().astype(np.float64)
    scorers = {
        "model": vector_scorer(encoder(candidate.model.to(device), tokenizer), candidate.items.vectors),
        "bm25": bm25_scorer(texts),
        "pretrained": vector_scorer(encoder(pretrained, pretrained_tokenizer), pretrained_items.vectors),
        "popularity": lambda q: np.broadcast_to(popularity, (len(q), len(popularity))),
    }
    segment = search_segment(queries, scorers, len(item_ids), settings.evaluate.k)
    candidate.model.cpu()
    return segment


def _champion_split(tracker, candidate, split: str) -> str:
    """The split the champion's evaluation model trained under, where it is not tonight's (a
    changed ``features.split``, or "auto" turning to global_time as users return): that model
    may have trained on tonight's holdout, so it is not compared. "" otherwise (the same split,
    no champion, or one trained before the split was recorded)."""
    from recsys_lib.tracking import CHAMPION

    champion = tracker.alias(CHAMPION)
    if champion is None or champion.version == candidate.version:
        return ""
    trained = tracker.other_split(champion, split)
    if trained:
        log.warning("the champion %s trained on the %s split, tonight's is %s: it may have seen tonight's holdout, "
                    "so it is not compared tonight", champion.label, trained, split)  # fmt: skip
    return trained


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
        return _evaluation_retriever(settings, storage, tracker, champion, ds)[0], tracker.load_ranker(champion)
    except (OSError, ValueError, KeyError, TypeError, MlflowException) as e:
        log.warning("cannot re-evaluate champion %s on this split: %s", champion.label, e)
        return None, None


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

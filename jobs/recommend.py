"""Recommend (FAISS + numpy): user top-N, item-to-item and vector tables, staged for publish.

Reads user histories up to ds, the model's user tower, the item vectors and the index; writes
``runs/ds=<ds>/{user_topn, item_similar, query_topn, item_vectors, user_vectors}`` (query_topn:
the search log's frequent queries, searched as ``PublishedTables.search`` does; the vectors let a service
retrieve online with the same model), and ``runs/ds=<ds>/query_encoder/`` (the query side of the
model as ONNX with its tokenizer, for search). Seen items are excluded; users without a usable
history who said what they like (the users input's ``interests``) are ranked from their words
(a pseudo-history they pick, with the popularity prior train chose) when train's check found that
beats popularity (``interests.used``); the others get the most
popular items they have not seen, of their segment where the users input gives one
(``rules.fallback_by_segment``). Business rules (``[rules]``: blocked
items, new-item boost, minimum score, category cap) apply before the lists are cut to N. Users
are ranked in parts of ``recommend.users_per_part``, each written before the next starts, so
memory stays bounded by one part.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    from recsys_lib import recommend as rec
    from recsys_lib.embedding import CachedTexts, ItemVectors
    from recsys_lib.models.inference import export_query_encoder
    from recsys_lib.retrieval import Retriever
    from recsys_lib.rules import read_rules
    from recsys_lib.schema import QUERY_COL, USER_COL
    from recsys_lib.storage import FeatureTable, OutputTable, Storage
    from recsys_lib.tracking import Tracker

    storage, tracker = Storage(settings), Tracker(settings)
    mv = tracker.resolve(model_version)
    cfg = settings.recommend
    items = ItemVectors.from_table(storage.read_item_embeddings(ds, mv.version))
    model, tokenizer = tracker.load_model(mv, "cpu")
    texts = CachedTexts(storage, model, tokenizer, settings.embed, torch.device("cpu"))
    retriever = Retriever(model, items, storage.read_index(ds, mv.version), cfg.user_batch_size, tokenizer,
                          pooled=texts)  # fmt: skip
    histories = storage.read_features(FeatureTable.USER_HISTORIES, ds).sort_values(USER_COL, kind="stable")
    popularity = rec.popularity_vector(items.ids, storage.read_features(FeatureTable.ITEM_STATS, ds))
    words = _words_model(storage, tracker, mv, ds, retriever, histories, popularity)
    rules = read_rules(settings.rules, storage, ds, items.ids, items.vectors)
    by_segment = None
    if settings.rules.fallback_by_segment:
        segments = storage.read_features(FeatureTable.SEGMENT_POPULARITY, ds)
        by_segment = rec.SegmentPopularity.from_frame(segments, items.ids, popularity, settings.rules.min_segment_users)
    ranking = _served_ranking(settings, storage, tracker, mv, ds, items)
    totals = Counter(users=0, interests_users=0, fallback_users=0, segment_fallback_users=0, user_rows=0)

    def user_parts():
        for start in range(0, len(histories), cfg.users_per_part):
            part = histories.iloc[start : start + cfg.users_per_part]
            ranked = rec.user_topn(retriever, part, popularity, cfg.top_n, mv.label, ds, rules, by_segment, ranking,
                                   words)  # fmt: skip
            totals.update(ranked.counts)
            yield {OutputTable.USER_TOPN: ranked.table, OutputTable.USER_VECTORS: ranked.vectors}

    parts = storage.write_output_parts(ds, user_parts())
    similar = rec.item_similar(retriever, cfg.similar_n, mv.label, ds, rules.blocked)
    storage.write_output_table(OutputTable.ITEM_SIMILAR, ds, similar)
    queries = storage.read_features(FeatureTable.TOP_QUERIES, ds)[QUERY_COL].tolist()
    searched = rec.query_topn(retriever, queries, cfg.top_n, mv.label, ds, rules.blocked)
    storage.write_output_table(OutputTable.QUERY_TOPN, ds, searched)
    active = items.subset(np.flatnonzero(~rules.blocked))  # a service must not retrieve blocked items either
    storage.write_output_table(OutputTable.ITEM_VECTORS, ds, rec.item_vectors_table(active, mv.label))
    # The query side, for search services: the one registered with the model in MLflow (older
    # versions without one: exported now).
    encoder_files = tracker.query_encoder_files(mv)
    if encoder_files is None:
        with tempfile.TemporaryDirectory() as folder:
            encoder_files = export_query_encoder(model, tokenizer, Path(folder))
    storage.write_output_files(Storage.QUERY_ENCODER, ds, encoder_files)
    summary = {**totals, "user_parts": parts, "items": len(items), "item_rows": similar.num_rows,
               "queries": len(queries), "query_rows": searched.num_rows,
               "blocked_items": int(rules.blocked.sum()), "ranker": float(ranking is not None)}  # fmt: skip
    log.info("recommend %s", summary)
    tracker.log_metrics(mv.run_id, {f"recommend.{k}": v for k, v in summary.items()})
    outputs = {name: storage.output_uri(name, ds) for name in [*OutputTable, Storage.QUERY_ENCODER]}
    return {"ds": ds, "model_version": mv.version, **outputs, **summary}


def _words_model(storage, tracker, mv, ds: str, retriever, histories, popularity):
    """What serves users known only by their words: a ``WordsModel`` over the users with a
    history, with the strength train's check chose, where that check found words beat popularity
    and someone without a history said something; else None (the popularity fallback)."""
    import numpy as np

    from recsys_lib.schema import HISTORY_COL, INTERESTS_COL, SEEN_COL, USER_COL
    from recsys_lib.storage import FeatureTable
    from recsys_lib.words import DEFAULT_WORDS_L2, WordsModel, reference_users

    trained = tracker.run_metrics(mv.run_id)
    if trained.get("interests.used", 0.0) <= 0 or INTERESTS_COL not in histories or retriever.tokenizer is None:
        return None
    history_idx = retriever.items.indices(histories[HISTORY_COL])
    no_history = np.array([len(h) == 0 for h in history_idx], dtype=bool)
    if not (no_history & histories[INTERESTS_COL].notna().to_numpy()).any():
        return None
    pairs = storage.read_features(FeatureTable.SEARCH_PAIRS, ds)
    seen_idx = retriever.items.indices(histories[SEEN_COL])
    _, vectors, used = reference_users(retriever, history_idx, seen_idx, pairs, histories[USER_COL].to_numpy())
    return WordsModel.fit(vectors, used, trained.get("interests.l2", DEFAULT_WORDS_L2), popularity)


def _served_ranking(settings: Settings, storage, tracker, mv, ds: str, items):
    """The version's ranker with every user's features as of the end of ds, when ranking is on
    and the ranker won its check; else None (retrieval order)."""
    from recsys_lib.ranker import EventLog, ServedRanking
    from recsys_lib.rules import first_categories
    from recsys_lib.schema import CATEGORIES_COL, ITEM_COL, TIMESTAMP_COL, USER_COL, day_end_seconds
    from recsys_lib.storage import FeatureTable

    ranker = tracker.load_ranker(mv) if settings.rank.enabled else None
    if ranker is None or not ranker.use:
        return None
    documents = storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds, columns=[ITEM_COL, CATEGORIES_COL])
    events = storage.read_features(FeatureTable.INTERACTIONS_ALL, ds, columns=[USER_COL, ITEM_COL, TIMESTAMP_COL])
    context = ranker.context(items, first_categories(documents, items.ids), EventLog.from_frame(events, items.ids),
                             events[[USER_COL, ITEM_COL]])  # fmt: skip
    return ServedRanking(ranker, context, day_end_seconds(ds))


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

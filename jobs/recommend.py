"""Recommend (FAISS + numpy): user top-N and item-to-item tables, staged for publish.

Reads user histories up to ds, the model's user tower, the item vectors and the index; writes
``runs/ds=<ds>/{user_topn, item_similar}``. Seen items are excluded; users without a usable
history get the most popular items they have not seen, of their segment where the optional
users input gives one (``rules.fallback_by_segment``). Business rules (``[rules]``: blocked
items, new-item boost, minimum score, category cap) apply before the lists are cut to N.
"""

from __future__ import annotations

import logging
from typing import Any

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage

log = logging.getLogger(__name__)


def popularity_vector(item_index, stats):
    """Distinct users per catalogue item (0 for items nobody touched yet)."""
    import numpy as np

    from recsys_lib.schema import ITEM_COL

    pos = item_index.get_indexer(stats[ITEM_COL])
    out = np.zeros(len(item_index), dtype=np.float64)
    out[pos[pos >= 0]] = stats["n_users"].to_numpy()[pos >= 0]
    return out


def user_queries(model, item_vectors, history_idx, batch_size: int):
    """(index queries [u, d + 1], fallback [u] bool) for users with these histories.

    A user whose history holds no catalogue item has no vector and falls back to popularity.
    """
    import numpy as np
    import torch

    from recsys_lib.models.two_tower import embed_users, history_matrix, retrieval_users

    matrix = history_matrix(history_idx, model.config.history_length)
    vectors = embed_users(model, torch.from_numpy(item_vectors), matrix, batch_size).numpy()
    fallback = np.array([len(h) == 0 for h in history_idx], dtype=bool)
    return retrieval_users(vectors, model.temperature.item()), fallback


def index_searcher(index):
    from recsys_lib.index import search

    return lambda queries, k: search(index, queries, k)


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    import numpy as np

    from jobs._common import business_rules, load_model, open_stage, read_features, read_item_vectors, to_indices
    from jobs.build_index import load_item_index
    from recsys_lib import recommend as rec
    from recsys_lib.models.two_tower import retrieval_neighbours
    from recsys_lib.schema import HISTORY_COL, SEEN_COL, SEGMENT_COL, USER_COL

    storage, tracker, mv = open_stage(settings, model_version)
    cfg = settings.recommend
    item_index, item_vectors, _ = read_item_vectors(storage, ds, mv)
    index = load_item_index(storage, ds, mv.version)
    searcher = index_searcher(index)
    model, _ = load_model(tracker, mv, "cpu")
    histories = read_features(storage, "user_histories", ds).sort_values(USER_COL, kind="stable")
    popularity = popularity_vector(item_index, read_features(storage, "item_stats", ds))

    rules = business_rules(settings, storage, ds, item_index)
    by_segment = None
    if settings.rules.fallback_by_segment:
        by_segment = rec.SegmentPopularity.from_frame(
            read_features(storage, "segment_popularity", ds), item_index, popularity, settings.rules.min_segment_users
        )
    items = item_index.to_numpy()
    totals = {"users": 0, "fallback_users": 0, "segment_fallback_users": 0, "user_rows": 0}

    def user_topn_parts():
        """The user table in parts of ``users_per_part`` users: memory stays bounded by one part."""
        for start in range(0, len(histories), cfg.users_per_part):
            part = histories.iloc[start : start + cfg.users_per_part]
            history_idx = to_indices(item_index, part[HISTORY_COL])
            seen_idx = to_indices(item_index, part[SEEN_COL])
            queries, fallback = user_queries(model, item_vectors, history_idx, cfg.user_batch_size)
            scores, ids = rec.rank_users(
                searcher, queries, seen_idx, popularity, cfg.top_n, cfg.user_batch_size, fallback, rules,
                segments=part[SEGMENT_COL].to_numpy(dtype=object), segment_popularity=by_segment,
            )  # fmt: skip
            reasons = rec.explain(item_vectors, history_idx, ids)
            u, r, i, s, why = rec.ranked_rows(part[USER_COL].to_numpy(), ids, scores, reasons)
            reason_ids = np.where(why >= 0, items[why.clip(min=0)], None)
            table = rec.user_topn_table(u, r, items[i], s, mv.label, ds, reason_ids)
            totals["users"] += len(part)
            totals["fallback_users"] += int(fallback.sum())
            if by_segment is not None:
                totals["segment_fallback_users"] += sum(seg in by_segment for seg in part[SEGMENT_COL][fallback])
            totals["user_rows"] += table.num_rows
            yield table

    outputs = {}
    key = Storage.run_output("user_topn", ds)
    parts = storage.work.replace_table_parts(key, user_topn_parts())
    outputs["user_topn"] = storage.work.uri(key)

    sim_scores, sim_ids = rec.similar_items(searcher, retrieval_neighbours(item_vectors), cfg.similar_n, rules.blocked)
    a, r2, b, s2 = rec.ranked_rows(items, sim_ids, sim_scores)
    similar = rec.item_similar_table(a, r2, items[b], s2, mv.label, ds)
    key = Storage.run_output("item_similar", ds)
    storage.work.replace_table(key, similar)
    outputs["item_similar"] = storage.work.uri(key)
    summary = {
        **totals,
        "user_parts": len(parts),
        "items": len(items),
        "item_rows": similar.num_rows,
        "blocked_items": int(rules.blocked.sum()),
    }
    log.info("recommend %s", summary)
    tracker.log_metrics(mv.run_id, {f"recommend.{k}": v for k, v in summary.items()})
    return {"ds": ds, "model_version": mv.version, **outputs, **summary}


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

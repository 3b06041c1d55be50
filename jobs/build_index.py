"""Build index (FAISS): item vectors -> index file + id map + manifest with recall@k.

Index rows are [vector, bias], so one index serves both user queries (scores = the model's
logits) and item-to-item queries (scores = cosine similarity); ``index.kind`` (auto by catalogue
size) picks exact or approximate search.

Writes ``index/ds=<ds>/model_version=<v>/{items.faiss, id_map, manifest.json}``; recall@k of the
index against exact search on sampled catalogue queries goes to the manifest and to MLflow.
"""

from __future__ import annotations

import logging
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    from recsys_lib.embedding import ItemVectors
    from recsys_lib.retrieval import build_item_index
    from recsys_lib.storage import Storage
    from recsys_lib.tracking import Tracker

    storage, tracker = Storage(settings), Tracker(settings)
    mv = tracker.resolve(model_version)
    items = ItemVectors.from_table(storage.read_item_embeddings(ds, mv.version))
    cfg = settings.index
    built = build_item_index(items, cfg, seed=settings.evaluate.seed)
    manifest = {"ds": ds, "model_version": mv.version, **built.manifest(items, cfg)}
    location = storage.write_index(ds, mv.version, built.index, list(items.ids), manifest)
    log.info("%s index over %d items, recall@%d %.4f", built.kind, len(items), cfg.recall_k, built.recall)
    metrics = {f"index.recall_at_{cfg.recall_k}": built.recall, "index.build_seconds": built.seconds}
    tracker.log_metrics(mv.run_id, metrics)
    tracker.set_tags(mv.run_id, {"index.kind": built.kind})
    return {**manifest, "index": location}


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

"""Build index (FAISS): item vectors -> index file + id map + manifest with recall@k.

Index rows are [vector, bias], so one index serves both user queries (scores = the model's
logits) and item-to-item queries (scores = cosine similarity).

Writes ``index/ds=<ds>/model_version=<v>/{items.faiss, id_map, manifest.json}``; recall@k of the
index against exact search on sampled catalogue queries goes to the manifest and to MLflow.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage

log = logging.getLogger(__name__)
INDEX_FILE = "items.faiss"
MANIFEST_FILE = "manifest.json"


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    import pyarrow as pa

    from jobs._common import open_stage, read_item_vectors
    from recsys_lib.index import build_index, index_kind, measure_recall, save_index
    from recsys_lib.models.two_tower import retrieval_items, retrieval_neighbours
    from recsys_lib.schema import ITEM_COL

    storage, tracker, mv = open_stage(settings, model_version)
    item_ids, vectors, bias = read_item_vectors(storage, ds, mv)
    rows = retrieval_items(vectors, bias)
    cfg = settings.index
    started = time.perf_counter()
    index = build_index(rows, cfg.kind, cfg.hnsw_m, cfg.hnsw_ef_search, cfg.ivf_nprobe)
    build_seconds = time.perf_counter() - started
    recall = measure_recall(
        index,
        rows,
        cfg.recall_k,
        cfg.recall_queries,
        seed=settings.evaluate.seed,
        queries=retrieval_neighbours(vectors),
    )
    manifest = {
        "ds": ds,
        "model_version": mv.version,
        "kind": index_kind(index),
        "items": len(item_ids),
        "dim": int(rows.shape[1]),
        f"recall_at_{cfg.recall_k}": recall,
        "build_seconds": build_seconds,
    }
    with storage.temp_dir() as tmp:
        path = f"{tmp}/{INDEX_FILE}"
        save_index(index, path)
        storage.work.upload(path, Storage.index(ds, mv.version, INDEX_FILE))
    storage.work.replace_table(Storage.index(ds, mv.version, "id_map"), pa.table({ITEM_COL: list(item_ids)}))
    storage.work.write_bytes(Storage.index(ds, mv.version, MANIFEST_FILE), json.dumps(manifest, indent=2).encode())
    log.info("%s index over %d items, recall@%d %.4f", manifest["kind"], len(item_ids), cfg.recall_k, recall)
    tracker.log_metrics(mv.run_id, {f"index.recall_at_{cfg.recall_k}": recall, "index.build_seconds": build_seconds})
    tracker.set_tags(mv.run_id, {"index.kind": manifest["kind"]})
    return {**manifest, "index": storage.work.uri(Storage.index(ds, mv.version))}


def load_item_index(storage: Storage, ds: str, model_version: str):
    """The FAISS index built for (ds, model version), read from the work store."""
    from recsys_lib.index import load_index

    with storage.temp_dir() as tmp:
        path = f"{tmp}/{INDEX_FILE}"
        storage.work.download(Storage.index(ds, model_version, INDEX_FILE), path)
        return load_index(path)


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

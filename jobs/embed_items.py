"""Embed items (batched torch, GPU when present): every catalogue item -> a vector.

Writes ``embeddings/ds=<ds>/model_version=<v>`` (item_id, vector, content_hash, model_version).
Items whose document hash is unchanged under the same model version reuse their earlier vector.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage

log = logging.getLogger(__name__)


def previous_embeddings(storage: Storage, ds: str, model_version: str):
    """The latest embeddings table of this model version up to ds, or None."""
    for day in reversed([d for d in storage.partitions("embeddings") if d <= ds]):
        key = Storage.item_embeddings(day, model_version)
        if storage.work.table_exists(key):
            return storage.work.read_table(key).to_pandas()
    return None


def embed_version(settings: Settings, storage: Storage, tracker, mv, ds: str) -> dict[str, Any]:
    """Embed the catalogue of ``ds`` with model version ``mv`` into the work store."""
    from jobs._common import load_model, read_features
    from recsys_lib.embedding import embed_catalogue
    from recsys_lib.models.two_tower import resolve_device
    from recsys_lib.schema import ITEM_COL

    documents = read_features(storage, "item_documents", ds).sort_values(ITEM_COL, kind="stable")
    device = resolve_device(settings.embed.device)
    model, tokenizer = load_model(tracker, mv, device)
    started = time.perf_counter()
    table, counts = embed_catalogue(
        model,
        tokenizer,
        documents.reset_index(drop=True),
        mv.version,
        settings.embed.batch_size,
        device,
        previous=previous_embeddings(storage, ds, mv.version),
    )
    seconds = time.perf_counter() - started
    key = Storage.item_embeddings(ds, mv.version)
    storage.work.replace_table(key, table)
    log.info(
        "%s: embedded %d items, reused %d, in %.1fs on %s",
        mv.label,
        counts["embedded"],
        counts["reused"],
        seconds,
        device,
    )
    return {
        "embeddings": storage.work.uri(key),
        "items": len(documents),
        **counts,
        "seconds": seconds,
        "device": device.type,
    }


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    from jobs._common import open_stage

    storage, tracker, mv = open_stage(settings, model_version)
    result = embed_version(settings, storage, tracker, mv, ds)
    tracker.log_metrics(
        mv.run_id,
        {f"embed.{k}": result[k] for k in ("items", "embedded", "reused", "seconds")},
    )
    return {"ds": ds, "model_version": mv.version, **result}


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

"""Embed items (batched torch, GPU when present): every catalogue item -> a vector.

With ``embed.engine = "spark"`` (the cluster profile) and no GPU here, the transformer pass runs
on the Spark executors (recsys_lib/spark_embedding.py); the rest is the same.

Writes ``embeddings/ds=<ds>/model_version=<v>`` (item_id, vector, bias, content_hash,
model_version) for the served model. The transformer runs only for documents whose (content
hash, encoder fingerprint) is not in the encoder-output cache: after train, none of today's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    from recsys_lib.embedding import embed_version
    from recsys_lib.models.two_tower import resolve_device
    from recsys_lib.storage import Storage
    from recsys_lib.tracking import Tracker

    storage, tracker = Storage(settings), Tracker(settings)
    mv = tracker.resolve(model_version)
    device = resolve_device(settings.embed.device)
    model, tokenizer = tracker.load_model(mv, device)
    started = time.perf_counter()
    encoder = None
    if settings.embed.engine == "spark" and device.type == "cpu":
        from recsys_lib.spark_embedding import SparkEncoder

        def encoder(runtime: str) -> SparkEncoder:
            return SparkEncoder(settings, mv.version, runtime)

    _, summary = embed_version(storage, ds, model, tokenizer, mv.version, settings.embed, device, encoder=encoder)
    summary["seconds"] = time.perf_counter() - started
    log.info("%s: %d items, %d through the transformer, %d from its cache, in %.1fs on %s", mv.label,
             summary["items"], summary["encoded"], summary["cached"], summary["seconds"], device)  # fmt: skip
    tracker.log_metrics(mv.run_id, {f"embed.{k}": summary[k] for k in ("items", "encoded", "cached", "seconds")})
    engine = "spark" if encoder is not None else "local"
    return {"ds": ds, "model_version": mv.version, **summary, "device": device.type, "engine": engine}


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

"""The transformer pass of embed_items spread over Spark executors (``embed.engine = "spark"``,
the cluster profile's choice on CPU workers).

Only the texts the encoder-output cache lacks travel: the driver sends (row, text) to
``mapInPandas``; each executor's Python worker loads the registered model version once from the
artefact store (MLflow, through its local download cache) and keeps it for every later task,
tokenises and pools its partition with the runtime the driver chose, and sends back the pooled
outputs. The driver applies the cheap rest of the item tower and writes the table, exactly as the
single-process path does, so the two agree to float rounding.
Tests: tests/integration/test_services.py (a standalone master and worker on loopback).
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np
import pandas as pd

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)

# Per executor Python worker (Spark reuses them across tasks): version -> (model, pooler).
_LOADED: dict[tuple[str, str], tuple] = {}


class SparkEncoder:
    """texts -> pooled transformer outputs [n, d], computed on the executors of
    ``settings.spark.master`` by ``model_version`` in ``runtime``."""

    def __init__(self, settings: Settings, model_version: str, runtime: str):
        self.settings, self.model_version, self.runtime = settings, model_version, runtime

    def __call__(self, texts: list[str]) -> np.ndarray:
        from recsys_lib.spark import get_spark

        spark = get_spark(self.settings, "recsys-embed")
        # A few tasks per executor core (stragglers even out), never a task of less than a batch.
        batches = math.ceil(len(texts) / max(self.settings.embed.batch_size, 1))
        partitions = max(1, min(spark.sparkContext.defaultParallelism * 4, batches))
        frame = pd.DataFrame({"row": np.arange(len(texts), dtype=np.int64), "text": texts})
        log.info("encoding %d texts on %s in %d tasks (%s)", len(texts), self.settings.spark.master, partitions,
                 self.runtime)  # fmt: skip
        settings, version, runtime = self.settings, self.model_version, self.runtime

        def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            yield from encode_partition(settings, version, runtime, batches)

        pooled = (
            spark.createDataFrame(frame)
            .repartition(partitions)
            .mapInPandas(encode, schema="row long, pooled array<float>")
            .toPandas()
        )
        if len(pooled) != len(texts):
            raise RuntimeError(f"the executors returned {len(pooled)} pooled outputs for {len(texts)} texts")
        pooled = pooled.sort_values("row")
        return np.stack(pooled["pooled"].to_numpy()).astype(np.float32, copy=False)


def encode_partition(settings: Settings, version: str, runtime: str, batches: Iterator[pd.DataFrame]):
    """Runs on an executor: pool each batch of texts with the version's encoder."""
    import torch
    from pyspark import TaskContext

    from recsys_lib.embedding import encoder_pooler
    from recsys_lib.models.two_tower import TokenizedDocuments

    context = TaskContext.get()
    if context is not None:  # as many threads as the task holds cores, not the machine's
        torch.set_num_threads(max(1, int(context.cpus())))
    if (version, runtime) not in _LOADED:
        from recsys_lib.tracking import Tracker

        tracker = Tracker(settings)
        model, tokenizer = tracker.load_model(tracker.resolve(version), "cpu")
        _LOADED[(version, runtime)] = (model, tokenizer, encoder_pooler(model, runtime, settings.embed, "cpu"))
    model, tokenizer, pool = _LOADED[(version, runtime)]
    for batch in batches:
        docs = TokenizedDocuments.from_texts(tokenizer, batch["text"].tolist(), model.config.max_length)
        pooled = pool(docs)
        yield pd.DataFrame({"row": batch["row"].to_numpy(), "pooled": list(pooled.astype(np.float32))})

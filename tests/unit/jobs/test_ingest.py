"""The ingest stage on real Spark: all or nothing per ds, and reasons that name the cause."""

import hashlib

import pandas as pd
import pytest

from jobs import ingest
from recsys_lib.data import land_raw_drop
from recsys_lib.errors import DataValidationError
from recsys_lib.storage import Storage
from tests.conftest import make_settings

DS = "2026-01-02"


def lake_bytes(storage: Storage) -> dict[str, str]:
    return {k: hashlib.sha256(storage.work.read_bytes(k)).hexdigest() for k in storage.work.list("lake/")}


def items(titles: dict[str, str | None]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": list(titles), "title": list(titles.values()), "categories": "Drama"})


def interactions(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                         "timestamp": [1767225600 + n for n in range(len(pairs))]})  # fmt: skip


@pytest.mark.spark
def test_a_failing_run_leaves_the_lake_as_it_was(spark, settings):
    storage = Storage(settings)
    land_raw_drop(storage, DS, interactions([("u1", "a"), ("u2", "b"), ("u1", "b")]), items({"a": "A", "b": "B"}))
    ingest.run(settings, DS)
    before = lake_bytes(storage)
    assert any("/items/" in k for k in before) and any("/interactions/" in k for k in before)

    # The same ds again: an edited catalogue (valid on its own) with interactions over the limit.
    land_raw_drop(storage, DS, interactions([("u1", "a"), ("u2", "zz"), ("u3", "zz")]), items({"a": "A2", "b": "B2"}))
    with pytest.raises(DataValidationError, match="Nothing was written to the lake"):
        ingest.run(settings, DS)
    assert lake_bytes(storage) == before
    assert not storage.work.list("staging/")


@pytest.mark.spark
def test_an_event_on_a_rejected_item_says_why_the_item_was_rejected(spark, tmp_path):
    settings = make_settings(tmp_path / "data", **{"ingest.max_reject_fraction": 0.9})
    storage = Storage(settings)
    land_raw_drop(storage, DS, interactions([("u1", "a"), ("u2", "b")]), items({"a": "A", "b": None}))
    ingest.run(settings, DS)
    reasons = storage.work.read_table(Storage.quarantine("interactions", DS)).to_pandas()["reason"].tolist()
    assert reasons == ["item_id: its catalogue row was rejected (title: missing)"]

"""Landing contract-shaped frames as a day's raw drop (recsys_lib/data/__init__.py)."""

import pytest

from recsys_lib.data import land_raw_drop, synthetic
from recsys_lib.storage import Storage


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_land_raw_drop_replaces_the_days_files(settings, fmt):
    storage = Storage(settings)
    interactions, items = synthetic.generate(10, 5, seed=0)
    land_raw_drop(storage, "2026-01-01", interactions, items, fmt="csv")
    written = land_raw_drop(storage, "2026-01-01", interactions, items, fmt=fmt)
    assert storage.work.list("raw/interactions/ds=2026-01-01/") == [
        f"raw/interactions/ds=2026-01-01/interactions.{fmt}"
    ]
    assert written["items"].endswith(f"items.{fmt}")

"""Reading the items' side vectors: aligned to the catalogue, bad rows quarantined with a reason,
a file that cannot serve refused in one line, a model trained on other ones given none."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recsys_lib.errors import DataValidationError, SettingsError
from recsys_lib.side_vectors import ENTITY, read_side_vectors
from recsys_lib.storage import Storage

CATALOGUE = pd.Index(["a", "b", "c"], dtype=object)


def storage_for(settings, location: str) -> Storage:
    return Storage(dataclasses.replace(settings, model=dataclasses.replace(settings.model, side_vectors=location)))


def test_vectors_in_catalogue_order_bad_rows_quarantined(settings, tmp_path):
    path = tmp_path / "side.parquet"
    pd.DataFrame({
        "item_id": ["c", "a", "a", "b", "zzz", None],
        "vector": [[1.0, 2.0], [9.0, 9.0], [3.0, 4.0], [1.0, float("inf")], [5.0, 5.0], [1.0, 1.0]],
    }).to_parquet(path)  # fmt: skip
    storage = storage_for(settings, str(path))
    side = read_side_vectors(storage, CATALOGUE, "2024-01-01")
    np.testing.assert_array_equal(side, [[3.0, 4.0], [0.0, 0.0], [1.0, 2.0]])  # a's last row; b: none usable
    rejected = storage.work.read_table(storage.quarantine(ENTITY, "2024-01-01")).to_pylist()
    assert [r["reason"] for r in rejected] == ["vector has a missing, NaN or infinite value", "item_id is missing"]
    # A model trained on vectors of another width gets none (its text alone), not an error.
    np.testing.assert_array_equal(read_side_vectors(storage, CATALOGUE, "2024-01-01", side_dim=4), np.zeros((3, 4)))


def test_no_file_no_vectors_and_files_that_cannot_serve_are_refused(settings, tmp_path):
    assert read_side_vectors(storage_for(settings, ""), CATALOGUE, "2024-01-01") is None
    assert read_side_vectors(storage_for(settings, ""), CATALOGUE, "2024-01-01", side_dim=2).shape == (3, 2)
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(SettingsError, match="cannot read it as Parquet"):
        read_side_vectors(storage_for(settings, str(tmp_path / "text.parquet")), CATALOGUE, "2024-01-01")
    pd.DataFrame({"item_id": ["a"], "embedding": [[1.0]]}).to_parquet(tmp_path / "cols.parquet")
    with pytest.raises(SettingsError, match="no column vector"):
        read_side_vectors(storage_for(settings, str(tmp_path / "cols.parquet")), CATALOGUE, "2024-01-01")
    pd.DataFrame({"item_id": ["a"], "vector": [[]]}).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataValidationError, match="no usable row"):
        read_side_vectors(storage_for(settings, str(tmp_path / "empty.parquet")), CATALOGUE, "2024-01-01")

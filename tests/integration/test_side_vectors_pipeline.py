"""Side vectors through the pipeline: ``model.side_vectors`` names a Parquet file, train builds a
model that fuses them, bad rows are quarantined with their reason, the night publishes, and
embed_items reads the file each run: a changed side vector moves that item's served vector and
no other."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs.pipeline import run_all
from recsys_lib.data import land_raw_drop, synthetic
from recsys_lib.embedding import vectors_of
from recsys_lib.side_vectors import ENTITY
from recsys_lib.storage import Storage
from recsys_lib.tracking import CANDIDATE, Tracker
from tests.conftest import make_settings

pytestmark = pytest.mark.slow


def test_side_vectors_reach_the_served_item_vectors(tmp_path, tiny_encoder):
    data = synthetic.generate_dataset(n_users=40, n_items=40, interactions_per_user=8, seed=3)
    ids = data.items["item_id"].tolist()
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal(6).tolist() for _ in ids]
    side = pd.DataFrame({"item_id": ids + ["i1", "not-in-catalogue", "i2"],
                         "vector": vectors + [[0.5] * 5, [1.0] * 6, [float("nan")] * 6]})  # fmt: skip
    side_file = tmp_path / "side.parquet"
    side.to_parquet(side_file)
    overrides = {"model.encoder": str(tiny_encoder), "model.side_vectors": str(side_file), "rank.enabled": False}
    settings = make_settings(tmp_path / "data", **overrides)
    storage, tracker = Storage(settings), Tracker(settings)
    ds = synthetic.last_day(data.interactions)
    land_raw_drop(storage, ds, data.interactions, data.items)

    night = run_all(settings, ds)  # every stage: evaluate embeds the evaluation model with them too
    assert night["publish"]["live"]
    mv = tracker.alias(CANDIDATE)
    # features.split auto on a few dozen users: user_chrono, recorded with the model and its evaluation.
    assert night["features"]["split"] == storage.read_split(ds) == "user_chrono"
    assert tracker.run_params(mv.run_id)["data.split"] == storage.read_evaluation(ds).split == "user_chrono"
    served, _ = tracker.load_model(mv)
    assert served.config.side_dim == 6
    rejected = storage.work.read_table(storage.quarantine(ENTITY, ds)).to_pandas()
    assert sorted(zip(rejected["item_id"], rejected["reason"])) == [
        ("i1", "vector has 5 values, expected 6"), ("i2", "vector has a missing, NaN or infinite value")
    ]  # fmt: skip
    before = storage.read_item_embeddings(ds, mv.version)

    moved = ids.index("i7")
    side.at[moved, "vector"] = rng.standard_normal(6).tolist()
    side.to_parquet(side_file)
    again = run_all(settings, ds, stages=("embed_items",))["embed_items"]  # the candidate again
    assert again["encoded"] == 0 and night["embed_items"]["items"] == again["items"] == len(ids)
    after = storage.read_item_embeddings(ds, mv.version)
    changed = np.flatnonzero(np.abs(vectors_of(after) - vectors_of(before)).max(1) > 1e-6)
    assert after.column("item_id").to_pylist()[changed[0]] == "i7" and len(changed) == 1

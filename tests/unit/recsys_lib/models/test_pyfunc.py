"""The registered version as an MLflow pyfunc, loaded by ``models:/`` URI in a fresh process: it
answers a batch of histories exactly as the retriever does in-process, falls back to popularity
for a history of unknown items, and carries its signature and input example."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from recsys_lib.models.two_tower import TwoTowerModel
from recsys_lib.recommend import top_n
from recsys_lib.retrieval import Retriever
from recsys_lib.tracking import Tracker
from tests.conftest import hand_made_items

LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
histories = pd.DataFrame({"history": [["a"], ["a", "b"], ["unknown"], []]})
out = model.predict(histories, params={"k": int(sys.argv[2])})
meta = model.metadata
print(json.dumps({
    "item_ids": out["item_ids"].tolist(), "scores": out["scores"].tolist(),
    "inputs": meta.get_input_schema().input_names(), "params": [p.name for p in meta.get_params_schema().params],
    "example": meta.saved_input_example_info is not None,
}))
"""


@pytest.mark.slow
def test_the_registered_version_serves_top_n_in_a_fresh_process(settings, tiny_encoder, tmp_path):
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), history_length=3, max_length=16, temperature=0.05)
    model.eval()
    items = hand_made_items()
    popularity = np.array([5.0, 1.0, 2.0, 9.0, 0.0])
    tracker = Tracker(settings)
    run_id = tracker.start_run("train", {"ds": "2026-01-01"})
    tracker.log_served_model(run_id, model, tokenizer, items, popularity, settings.index, [["a", "b"], ["c"]])
    tracker.finish_run(run_id)
    mv = tracker.register_model(run_id, {})

    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking.tracking_uri}
    uri = f"models:/{mv.name}/{mv.version}"
    done = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, uri, "3"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])

    retriever = Retriever.with_index(model, items, settings.index)
    seen = retriever.items.indices([["a"], ["a", "b"]])
    scores, ids = top_n(retriever.search, retriever.user_queries(seen)[0], seen, 3, len(items))
    assert got["item_ids"][:2] == [[items.ids[i] for i in row] for row in ids]
    np.testing.assert_allclose(np.array(got["scores"][:2]), scores, rtol=1e-5)
    assert got["item_ids"][1][0] == "c"  # the mean of a and b is c
    # No known item: the most popular unseen items, scored popularity / max.
    assert got["item_ids"][2:] == [["d", "a", "c"]] * 2
    assert got["scores"][2] == pytest.approx([1.0, 5 / 9, 2 / 9])
    assert got["inputs"] == ["history"] and got["params"] == ["k"] and got["example"]
    # The pipeline reads the same version's checkpoint out of the pyfunc.
    reloaded, _ = TwoTowerModel.load(tracker.download_model(mv.version))
    assert reloaded.config == model.config

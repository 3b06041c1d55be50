"""The registered model as an MLflow pyfunc: a batch of user histories (item ids) -> top-N item ids.

MLflow's "models from code": this file is the model's code (``set_model`` below), logged with
the checkpoint and the served model's item vectors as artifacts, and with ``recsys_lib`` itself
as code, so ``mlflow.pyfunc.load_model("models:/<name>/<version>")`` serves in any process with
the requirements installed, and nothing is pickled. It answers with the first stage, as the
index does: the user tower over the history's latest items, top-k by ``cosine / T + item bias``
over the catalogue the model was trained with, seen items excluded; a history with no known
item gets the most popular items. The batch tables add what needs the night's data (the ranker's
event features, business rules, new items). ``tracking.log_served_model`` writes it.

    model = mlflow.pyfunc.load_model("models:/recsys_two_tower/3")
    model.predict(pd.DataFrame({"history": [["1", "50", "260"]]}), params={"k": 10})
    # -> DataFrame with columns item_ids (list of k ids, best first) and scores (list of k floats)

Tests: tests/unit/recsys_lib/models/test_pyfunc.py (loads a logged version in a fresh process).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from recsys_lib.tracking import CHECKPOINT_ARTIFACT

HISTORY = "history"
ITEM_IDS = "item_ids"
SCORES = "scores"
POPULARITY = "popularity"
ITEMS_ARTIFACT = "items"
INDEX_CONFIG = "index"
DEFAULT_K = 10


class TopNModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import pyarrow.parquet as pq

        from recsys_lib.embedding import ItemVectors
        from recsys_lib.models.two_tower import TwoTowerModel
        from recsys_lib.retrieval import Retriever
        from recsys_lib.settings import IndexSettings

        model, _ = TwoTowerModel.load(context.artifacts[CHECKPOINT_ARTIFACT])
        table = pq.read_table(context.artifacts[ITEMS_ARTIFACT])
        self.popularity = table.column(POPULARITY).to_numpy().astype(np.float64)
        items = ItemVectors.from_table(table)
        index = IndexSettings(**context.model_config[INDEX_CONFIG])  # the pipeline's [index] settings
        self.retriever = Retriever.with_index(model, items, index)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from recsys_lib.recommend import popular_unseen, top_n

        k = int((params or {}).get("k", DEFAULT_K))
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        histories = [[str(i) for i in h] if h is not None else [] for h in model_input[HISTORY]]
        retriever = self.retriever
        seen = retriever.items.indices(histories)
        queries, fallback = retriever.user_queries(seen)
        scores, ids = top_n(retriever.search, queries, seen, k, len(retriever.items))
        if fallback.any():
            rows = np.flatnonzero(fallback)
            scores[rows], ids[rows] = popular_unseen(self.popularity, [seen[r] for r in rows], k)
        item_ids = retriever.items.ids.to_numpy()
        return pd.DataFrame({
            ITEM_IDS: [item_ids[row[row >= 0]].tolist() for row in ids],
            SCORES: [score[row >= 0].astype(float).tolist() for row, score in zip(ids, scores)],
        })  # fmt: skip


mlflow.models.set_model(TopNModel())

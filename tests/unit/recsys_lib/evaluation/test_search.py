"""The search protocol: held-out tags as queries, scored against hand-made answers."""

import numpy as np
import pandas as pd
import pytest

from recsys_lib.evaluation.search import SearchQueries, bm25_scorer, search_segment, vector_scorer

ITEMS = pd.Index(["a", "b", "c", "d", "e", "f"])
PAIRS = pd.DataFrame({
    "query": ["heist", "heist", "space", "space", "space", "time travel", "pixar", "pixar", "noir", "drama"],
    "item_id": ["a", "b", "c", "d", "gone", "e", "f", "a", "b", "a"],
    "is_holdout": [True] * 9 + [False],
})  # fmt: skip
DOCUMENTS = ["Heat. Crime", "Ronin. Crime, Action", "Alien. Horror, Space", "Solaris. Space drama",
             "Looper. Science fiction", "Up. Animation"]  # fmt: skip


def test_held_out_tags_are_the_queries_and_their_items_the_answers():
    queries = SearchQueries.from_pairs(PAIRS, ITEMS)
    assert queries.texts == ["heist", "noir", "pixar", "space", "time travel"]  # "drama" was trained on
    assert queries.relevant == [{0, 1}, {1}, {0, 5}, {2, 3}, {4}]  # "gone" is not in the catalogue


def test_the_segment_scores_each_ranker_on_the_whole_catalogue():
    queries = SearchQueries.from_pairs(PAIRS, ITEMS)
    truth = np.zeros((len(queries), len(ITEMS)))
    for q, items in enumerate(queries.relevant):
        truth[q, list(items)] = 1.0
    scorers = {
        "bm25": bm25_scorer(DOCUMENTS),
        "model": lambda texts: truth[[queries.texts.index(t) for t in texts]],
        "backwards": lambda texts: -truth[[queries.texts.index(t) for t in texts]],
    }
    segment = search_segment(queries, scorers, len(ITEMS), ks=(2, 6))
    assert list(segment.rankers) == ["model", "bm25", "backwards"]  # the model first
    assert segment.rankers["model"]["ndcg_at_2"] == pytest.approx(1.0)
    assert segment.rankers["model"]["users"] == 5
    assert segment.rankers["backwards"]["recall_at_2"] == 0.0
    # BM25 finds "space" by its words (both documents) and nothing else.
    assert segment.rankers["bm25"]["recall_at_2"] == pytest.approx(1 / 5)


def test_too_few_held_out_tags_say_so():
    queries = SearchQueries.from_pairs(PAIRS.iloc[:2], ITEMS)
    segment = search_segment(queries, {"bm25": bm25_scorer(DOCUMENTS)}, len(ITEMS), ks=(10,))
    assert segment.rankers == {} and "too few" in segment.note


def test_vector_scorer_is_an_inner_product():
    vectors = np.eye(3, dtype=np.float32)
    scores = vector_scorer(lambda texts: np.ones((len(texts), 3), np.float32) * 2, vectors)(["x", "y"])
    assert scores.tolist() == [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]

"""The evaluation protocols on a hand-made split: hand-made item vectors and an untrained tiny
model (whose user tower is the mean of the history), so every ranking is known."""

import numpy as np
import pandas as pd
import pytest

from recsys_lib import baselines as bl
from recsys_lib.evaluation import protocols
from recsys_lib.evaluation.protocols import Baseline, EvaluationSplit, WarmUsers, evaluate_candidate
from recsys_lib.retrieval import Retriever, build_item_index
from recsys_lib.settings import IndexSettings
from tests.conftest import hand_made_items

FLAT = IndexSettings("flat", recall_queries=5, recall_k=3, hnsw_m=16, hnsw_ef_search=64, ivf_nprobe=8)
ITEMS = hand_made_items(bias=(0.0,) * 5)  # a = e0, b = e1, c = (a + b) / sqrt 2, d = -a, e = e2


def split(cold=()):
    return EvaluationSplit.from_frames(*_frames(cold))


def _frames(cold=()):
    histories = pd.DataFrame(
        {"user_id": ["u3", "u1", "u2"], "history": [["b"], ["a", "b"], ["d"]], "seen": [["b"], ["a", "b"], ["d"]]}
    )
    train = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u3"],
            "item_id": ["a", "b", "d", "b"],
            "is_validation": [False, True, True, False],
        }
    )
    holdout = pd.DataFrame({"user_id": ["u1", "u2", "u2"], "item_id": ["c", "a", "d"]})  # u2 had seen d
    cold_events = pd.DataFrame({"user_id": ["u2"], "item_id": ["e"]})
    documents = pd.DataFrame({"item_id": list("edcba"), "document": ["echo", "delta", "charlie", "bravo", "alpha"]})
    return ITEMS.ids, histories, train, holdout, pd.DataFrame({"item_id": list(cold)}), cold_events, documents


def test_the_split_as_catalogue_indices():
    s = split(cold=["e"])
    assert s.users.tolist() == ["u1", "u2", "u3"]  # sorted
    assert [h.tolist() for h in s.history_idx] == [[0, 1], [3], [1]]
    assert s.holdout == [{2}, {0}, set()]  # u2's d was seen in training: not relevant
    assert s.train.toarray().tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 1, 0, 0, 0]]
    assert s.fit.toarray().sum() == 2  # without the two validation events
    assert s.validation_users.tolist() == [0, 1] and s.validation_targets.tolist() == [1, 3]
    assert s.cold_idx.tolist() == [4] and s.cold_relevant == [set(), {0}, set()]
    assert s.documents == ["alpha", "bravo", "charlie", "delta", "echo"] and s.popularity().tolist() == [1, 2, 0, 1, 0]
    warm = WarmUsers.of(s)
    assert warm.rows.tolist() == [0, 1] and [e.tolist() for e in warm.seen] == [[0, 1], [3]]
    assert warm.cold.tolist() == [4]  # out of every user's list


def test_a_seeded_sample_of_the_scored_users_keeps_every_training_event():
    holdout = pd.DataFrame({"user_id": [f"u{n}" for n in range(10)], "item_id": "a"})
    cold = pd.DataFrame({"user_id": ["u3", "x"], "item_id": "e"})
    kept, kept_cold = protocols.scored_sample(holdout, cold, max_users=4, seed=1)
    chosen = set(kept["user_id"]) | set(kept_cold["user_id"])
    assert len(chosen) == 4 and chosen <= {f"u{n}" for n in range(10)} | {"x"}
    again = protocols.scored_sample(holdout, cold, max_users=4, seed=1)
    assert again[0].equals(kept) and again[1].equals(kept_cold)  # the candidate and champion share it
    assert protocols.scored_sample(holdout, cold, max_users=0, seed=1)[0] is holdout
    assert protocols.scored_sample(holdout, cold, max_users=11, seed=1)[0] is holdout

    s = EvaluationSplit.from_frames(*_frames(cold=["e"]), max_users=1, seed=0)
    scored = {u for u, held, cold in zip(s.users, s.holdout, s.cold_relevant) if held or cold}
    assert len(scored) == 1 and s.train.toarray().sum() == 4  # one user scored; the baselines fit on all


@pytest.fixture
def candidate(tiny_two_tower):
    return Retriever(tiny_two_tower, ITEMS, build_item_index(ITEMS, FLAT).index, batch_size=2)


def test_the_candidate_the_champion_and_a_baseline_on_one_split(candidate):
    baselines = {"popularity": Baseline(bl.MostPopular), "item_knn": Baseline(bl.ItemKNN, {"neighbours": [1, 2]})}
    report = evaluate_candidate(split(), candidate, candidate, baselines, ks=(1, 2), seed=0, ds="2026-01-01",
                                model_version="m/3")  # fmt: skip
    model = report.all_users.get("model")
    # u1 (mean of a and b) ranks c first: a hit at rank 1. u2 (= -a) ranks a last: a miss.
    assert model["recall_at_1"] == model["ndcg_at_1"] == model["recall_at_2"] == 0.5
    assert model["users"] == 2 and model["coverage_at_1"] == pytest.approx(2 / 5)
    assert report.all_users.get("champion") == model  # the same retriever, the same lists
    assert set(report.all_users.rankers) == {"model", "champion", "popularity", "item_knn"}
    assert report.tuned == {"item_knn": {"neighbours": 1}} or report.tuned == {"item_knn": {"neighbours": 2}}
    assert report.light_users.users == 2 and report.light_users.get("model") == model  # 1-2 training events each
    assert report.cold_items.rankers == {} and "too few cold items" in report.cold_items.note
    assert report.primary_metric == "ndcg_at_1" and report.model_version == "m/3"


def test_the_cold_item_protocol(candidate, monkeypatch):
    monkeypatch.setattr(protocols, "MIN_COLD_ITEMS", 0)  # five items are too few for real numbers
    s = split(cold=["e"])
    served = np.array([[4, 2], [1, 2]])  # e was served to one user in two
    segment = protocols.cold_item_segment(s, candidate, served, k=1, depth=2, seed=0)
    assert segment.title == "cold items (n=1, users=1)"
    # One cold item: every ranker ranks it first for the one user who used it.
    assert segment.get("model") == {"recall_at_1": 1.0, "ndcg_at_1": 1.0, "share_in_top_2": 0.25}
    assert segment.get("tfidf") == segment.get("random") == {"recall_at_1": 1.0, "ndcg_at_1": 1.0}
    assert segment.get("item_vectors") == {"recall_at_1": 1.0, "ndcg_at_1": 1.0}
    assert segment.get("catalogue") == {"share_in_top_2": 0.2}


def test_untuned_baselines_take_the_middle_of_their_grid(candidate):
    baselines = {"item_knn": Baseline(bl.ItemKNN, {"neighbours": [1, 2, 3], "shrink": [0.0, 5.0]})}
    report = evaluate_candidate(split(), candidate, None, baselines, ks=(1,), seed=0, ds="2026-01-01",
                                model_version="m/3", tune_baselines=False)  # fmt: skip
    assert report.tuned == {"item_knn": {"neighbours": 2, "shrink": 5.0}}
    assert "champion" not in report.all_users.rankers


def test_baselines_are_made_by_name_and_spark_starts_only_for_spark_als():
    made = protocols.baselines(["popularity", "implicit_als", "cornac_bivae"], lambda: 1 / 0, seed=3)
    assert list(made) == ["popularity", "implicit_als", "cornac_bivae"]
    assert made["implicit_als"].grid == protocols.IMPLICIT_ALS_GRID and made["cornac_bivae"].grid is None
    with pytest.raises(ZeroDivisionError):  # the session is asked for when ALS is
        protocols.baselines(["als"], lambda: 1 / 0, seed=3)


def test_users_described_in_words_rank_from_their_words_alone(tiny_two_tower, tiny_encoder, monkeypatch):
    from transformers import AutoTokenizer

    from recsys_lib.evaluation import search

    # a, b and c say "crime", so every user says it and weighs every other user alike: a scored
    # user gets the items the others used most, ties to the more popular (a 3, c 2, b 1).
    words = pd.DataFrame({"query": "crime", "item_id": list("abc"), "is_holdout": False})
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder))
    retriever = Retriever(tiny_two_tower, ITEMS, build_item_index(ITEMS, FLAT).index, 2, tokenizer)
    seen = {"u1": ["a"], "u2": ["a", "c"], "u3": ["a", "c", "b"]}
    histories = pd.DataFrame({"user_id": list(seen), "history": list(seen.values()), "seen": list(seen.values())})
    train = pd.DataFrame([(u, i, False) for u, items in seen.items() for i in items],
                         columns=["user_id", "item_id", "is_validation"])  # fmt: skip
    holdout = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["b", "b"]})  # u3 only teaches
    frames = (ITEMS.ids, histories, train, holdout, pd.DataFrame({"item_id": []}), holdout.iloc[:0], _frames()[-1])
    s = EvaluationSplit.from_frames(*frames)
    assert search.text_user_segment(s, retriever, words, ks=(1, 2)).rankers == {}  # 2 users: too few
    monkeypatch.setattr(search, "MIN_QUERIES", 1)
    segment = search.text_user_segment(s, retriever, words, ks=(1, 2))
    # u1 (seen a), from u2 and u3: c (2 users), then b (1). u2 (seen a c), from u1 and u3: b.
    assert segment.rankers["model"]["recall_at_1"] == 0.5 and segment.rankers["model"]["recall_at_2"] == 1.0
    assert segment.rankers["popularity"]["users"] == 2 and segment.users == 2
    monkeypatch.setattr(search, "MAX_INTEREST_USERS", 1)  # more users than that: a seeded sample
    sampled = search.text_user_segment(s, retriever, words, ks=(1, 2))
    assert sampled.users == 1 and sampled.rankers["model"]["users"] == 1 and "a sample of 2" in sampled.title


def test_words_serve_users_known_by_them_only_where_they_beat_popularity(tiny_two_tower, tiny_encoder, monkeypatch):
    from transformers import AutoTokenizer

    from recsys_lib.evaluation import search
    from recsys_lib.models.examples import ValidationSet
    from recsys_lib.models.two_tower import PAD

    words = pd.DataFrame({"query": ["crime", "crime"], "item_id": ["a", "b"], "is_holdout": False})
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder))
    retriever = Retriever(tiny_two_tower, ITEMS, build_item_index(ITEMS, FLAT).index, 2, tokenizer)
    monkeypatch.setattr(search, "MIN_INTEREST_USERS", 1)
    # Three users whose histories (a, b) say "crime", each ranked from what the other two used:
    # u1 (seen a b) by u2's and u3's c, u2 (seen a b c) by u3's d, u3 (seen a b c d): e is left.
    history = np.array([[PAD, 0, 1]] * 3)
    validation = ValidationSet(history, np.array([2, 3, 4]), [np.array([0, 1]), np.array([0, 1, 2]),
                                                              np.array([0, 1, 2, 3])])  # fmt: skip
    popular_e = np.array([0.0, 0.0, 0.0, 0.0, 10.0])  # right for u3 only
    used = search.check_interests(retriever, validation, words, popular_e, k=1)
    assert used["interests.used"] == 1.0 and used["interests.model_ndcg_at_1"] == 1.0
    assert used["interests.popularity_ndcg_at_1"] == pytest.approx(1 / 3) and used["interests.users"] == 3.0
    assert used["interests.l2"] in search.WORDS_L2
    # Popularity as good as the words (c, then d, then e): popularity is kept.
    kept = search.check_interests(retriever, validation, words, np.array([0.0, 0.0, 3.0, 2.0, 1.0]), k=1)
    assert kept["interests.used"] == 0.0 and kept["interests.popularity_ndcg_at_1"] == 1.0
    assert search.check_interests(Retriever(tiny_two_tower, ITEMS, retriever.index, 2), validation, words,
                                  popular_e, k=1) == {"interests.used": 0.0}  # no tokenizer: no text path
    # Many validation users: a stable sample of MAX_INTEREST_USERS takes part.
    monkeypatch.setattr(search, "MAX_INTEREST_USERS", 2)
    assert search.check_interests(retriever, validation, words, popular_e, k=1)["interests.users"] == 2.0

"""Training examples and the validation set from hand-written interactions."""

import numpy as np
import pandas as pd
import pytest

from recsys_lib.models.examples import build_examples, build_validation, prepare_training_data
from recsys_lib.models.two_tower import PAD


def test_build_examples_by_hand():
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u3"],
            "item_id": ["b", "a", "c", "c", "zz", "a"],  # zz is not in the catalogue
            "timestamp": [20, 10, 30, 5, 6, 1],
        }
    )
    ex = build_examples(interactions, pd.Index(["a", "b", "c"]), history_length=2)
    # u1 in time order: a(0) b(1) c(2) -> (a -> b), (a b -> c); u2: only c is known; u3: one event.
    assert ex.history.tolist() == [[PAD, 0], [0, 1]]
    assert ex.target.tolist() == [1, 2]


def test_build_examples_with_no_interactions():
    ex = build_examples(pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []}), pd.Index(["a"]), 3)
    assert len(ex) == 0 and ex.history.shape == (0, 3)


def test_build_validation_holds_out_the_marked_event():
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u3"],
            "item_id": ["a", "b", "c", "b", "c", "a"],
            "timestamp": [1, 2, 3, 1, 2, 1],
            "is_validation": [False, False, True, False, True, True],
        }
    )
    train, validation = build_validation(interactions, pd.Index(["a", "b", "c"]), history_length=3)
    assert len(train) == 3 and not train["is_validation"].any()
    # u1: history a b -> c; u2: b -> c; u3 has nothing before its event and is left out.
    assert validation.history.tolist() == [[PAD, 0, 1], [PAD, PAD, 1]]
    assert validation.target.tolist() == [2, 2]
    assert [e.tolist() for e in validation.exclude] == [[0, 1], [1]]
    one = validation.sample(1, seed=0)
    assert len(one) == 1 and one.target.tolist()[0] == 2 and validation.sample(5, seed=0) is validation


def test_prepare_training_data_gives_warm_items_an_id():
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2"],
            "item_id": ["a", "b", "c", "b", "zz"],
            "timestamp": [1, 2, 3, 1, 2],
            "is_validation": [False, False, True, False, False],
        }
    )
    data = prepare_training_data(pd.Index(["a", "b", "c", "d"]), interactions, history_length=2,
                                 max_validation_users=10, seed=0)  # fmt: skip
    # c is only a validation target and d was never used: both are known by text alone.
    assert list(data.id_vocab) == ["a", "b"]
    assert data.examples.history.tolist() == [[PAD, 0]] and data.examples.target.tolist() == [1]
    assert data.validation.target.tolist() == [2]


def test_examples_weigh_what_their_target_event_weighs():
    interactions = pd.DataFrame(
        {"user_id": ["u1"] * 3, "item_id": ["a", "b", "c"], "timestamp": [1, 2, 3], "weight": [0.2, 3.0, 1.0]}
    )
    ex = build_examples(interactions, pd.Index(["a", "b", "c"]), history_length=2)
    # Relative weights (mean 1): the loss is a weighted mean, so only the ratio 3 : 1 counts.
    assert ex.target.tolist() == [1, 2] and ex.weight.tolist() == pytest.approx([1.5, 0.5])
    uniform = build_examples(interactions.assign(weight=2.0), pd.Index(["a", "b", "c"]), history_length=2)
    assert uniform.weight is None  # the plain mean: uniformly weighted data trains exactly as unweighted
    # Every user with a single event (a shop's first day, say): no example, and no error here; training
    # then refuses with one line.
    single = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"], "timestamp": [1, 2], "weight": [1.0, 2.0]})
    assert len(build_examples(single, pd.Index(["a", "b", "c"]), history_length=2, profile_share=0.5)) == 0
    # A finite weight beyond float32 (the contract allows any finite one) keeps its ratio, not inf.
    huge = build_examples(interactions.assign(weight=[1.0, 1e300, 3e299]), pd.Index(["a", "b", "c"]), history_length=2)
    assert huge.weight.dtype == np.float32 and huge.weight.tolist() == pytest.approx([2 / 1.3, 0.6 / 1.3])


def test_the_ranker_takes_a_share_of_the_validation_users_or_all_of_them():
    rows = [(f"u{u}", item, t, t == 2) for u in range(40) for t, item in enumerate(["a", "b", "c"])]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "is_validation"])
    data = prepare_training_data(pd.Index(["a", "b", "c"]), interactions, 2, 1000, seed=0, ranking_share=0.5)
    assert 10 < len(data.ranking) < 30 and len(data.validation) + len(data.ranking) == 40  # disjoint
    assert data.ranking.time.tolist() == [2] * len(data.ranking)
    capped = prepare_training_data(pd.Index(["a", "b", "c"]), interactions, 2, 8, seed=0, ranking_share=0.5)
    assert len(capped.validation) == len(capped.ranking) == 8  # both sampled: users x candidates costs
    shared = prepare_training_data(pd.Index(["a", "b", "c"]), interactions, 2, 1000, seed=0)
    assert shared.ranking is shared.validation and len(shared.ranking) == 40


def test_profile_examples_predict_each_item_from_the_users_other_items():
    interactions = pd.DataFrame(
        {"user_id": ["u1"] * 3 + ["u2"], "item_id": ["a", "b", "c", "a"], "timestamp": [1, 2, 3, 1]}
    )
    ex = build_examples(interactions, pd.Index(["a", "b", "c"]), history_length=2, profile_share=1.0)
    # Next-item: (a -> b), (a b -> c); profile: every u1 event from the other two, in time order;
    # u2 has one event and teaches nothing.
    assert ex.history.tolist() == [[PAD, 0], [0, 1], [1, 2], [0, 2], [0, 1]]
    assert ex.target.tolist() == [1, 2, 0, 1, 2]


def test_profile_examples_draw_distinct_other_items_when_the_user_has_many():
    items = [f"i{k:02d}" for k in range(30)]
    interactions = pd.DataFrame({"user_id": "u", "item_id": items, "timestamp": range(30)})
    ex = build_examples(interactions, pd.Index(items), history_length=4, profile_share=1.0, seed=3)
    profile = ex.history[29:]  # after the 29 next-item examples
    assert len(profile) == 30
    for history, target in zip(profile, ex.target[29:]):
        kept = history[history != PAD]
        assert 1 <= len(kept) <= 4 and target not in kept
        assert kept.tolist() == sorted(set(kept.tolist()))  # distinct, oldest first
        assert (history[: 4 - len(kept)] == PAD).all()  # right-aligned
    later = sum(int((h[h != PAD] > t).any()) for h, t in zip(profile, ex.target[29:]))
    assert later > 10  # later items are context too, not only earlier ones


WORD_PAIRS = pd.DataFrame({
    "query": ["drama", "drama", "drama", "heist", "heist", "pacino", "noir"],
    "item_id": ["a", "b", "c", "a", "b", "a", "c"],
    "is_holdout": [False, False, False, False, False, False, True],
})  # fmt: skip


def test_interest_texts_are_the_most_telling_words_of_a_history():
    from recsys_lib.models.examples import interest_texts

    items = pd.Index(["a", "b", "c", "d"])
    texts = interest_texts([np.array([0, 1]), np.array([2]), np.array([], np.int64)], WORD_PAIRS, items, n_terms=2)
    # pacino (idf log 4/2, said once: 0.69) before heist (idf log 4/3, said twice: 0.58); drama is
    # on 3 of 4 items (idf 0): it says nothing. Held-out tags (noir) are never used.
    assert texts == ["pacino, heist", "", ""]


def test_interest_pairs_describe_each_users_latest_items():
    from recsys_lib.models.examples import interest_pairs

    events = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u2"], "item_id": ["c", "a", "b", "d"],
                           "timestamp": [1, 2, 3, 1]})  # fmt: skip
    pairs = interest_pairs(events, pd.Index(["a", "b", "c", "d"]), WORD_PAIRS, max_users=10, max_items=2, seed=0)
    # u1's latest two items are a and b; u2's d has no words, so u2 gives no pair.
    assert sorted(map(tuple, pairs.to_numpy())) == [("pacino, heist", "a"), ("pacino, heist", "b")]
    assert len(interest_pairs(events, pd.Index(["a", "b", "c", "d"]), WORD_PAIRS, 1, 2, seed=0)) <= 2

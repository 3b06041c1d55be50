"""The words -> items regression on hand-made text vectors, every score worked out by hand."""

import numpy as np
import pytest

from recsys_lib import words
from recsys_lib.words import WordsModel, fold_scores, used_matrix

# Three reference users: 0 and 2 say "crime" (e0), 1 says "space" (e1).
SAID = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
USED = used_matrix([np.array([0, 1]), np.array([2]), np.array([0, 0])], n_items=4)  # a repeat counts once
NONE = np.zeros(4)  # no popularity: no tie-break


def test_used_items_are_a_binary_matrix():
    assert USED.toarray().tolist() == [[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    assert used_matrix([np.array([], np.int64)], 3).toarray().tolist() == [[0, 0, 0]]


def test_words_weigh_the_reference_users_who_said_alike_and_sum_their_items():
    # l2 = 2/3 of R / d = 3 / 2: lambda = 1, so (E'E + I) = diag(3, 2).
    model = WordsModel.fit(SAID, USED, l2=2 / 3, popularity=NONE)
    np.testing.assert_allclose(model.projection, [[1 / 3, 0, 1 / 3], [0, 1 / 2, 0]], rtol=1e-6)
    crime, space = model.queries(np.eye(2))
    np.testing.assert_allclose(crime, [1 / 3, 0, 1 / 3], rtol=1e-6)
    scores, ids = model.search(np.stack([crime, space]), 2)
    assert ids.tolist()[0] == [0, 1]  # a: both crime users, b: one of them
    np.testing.assert_allclose(scores[0], [2 / 3, 1 / 3], rtol=1e-6)
    assert ids[1, 0] == 2 and scores[1, 0] == pytest.approx(0.5)  # c: the space user's
    # k beyond the catalogue: every item, those nobody said alike used scoring 0.
    assert model.search(crime[None, :], 9)[1].shape == (1, 4)


def test_items_of_equal_score_go_to_the_more_popular():
    model = WordsModel.fit(SAID, USED, l2=1.0, popularity=np.array([0.0, 0.0, 1.0, 9.0]))
    scores, ids = model.search(model.queries(np.array([[1.0, 0.0]])), 4)
    # a and b from the crime users; then d (9 users) before c, both unused by crime users.
    assert ids.tolist() == [[0, 1, 3, 2]]
    assert scores[0, 2] <= 1.0001e-5 * scores[0, 0]
    assert model.tie_break.tolist() == [0.0, 0.0, pytest.approx(0.30103), 1.0]
    scores, ids = model.without(np.array([1, 3])).search(model.queries(np.array([[1.0, 0.0]])), 4)
    assert ids.tolist() == [[0, 2, -1, -1]] and np.isneginf(scores[0, 2:]).all()  # never the banned ones


def test_scores_are_the_same_computed_a_few_rows_at_a_time(monkeypatch):
    model = WordsModel.fit(SAID, USED, l2=1.0, popularity=NONE)
    queries = model.queries(np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    whole = model.search(queries, 3)
    monkeypatch.setattr(words, "SCORE_CELLS", 4)  # one row of 4 items at a time
    for got, expected in zip(model.search(queries, 3), whole):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_fold_never_learns_from_its_own_users():
    # Every reference user scored, three folds: user 0 is ranked by a model of users 1 and 2 only.
    parts = fold_scores(SAID, SAID, USED, same=np.arange(3), l2=1.0, popularity=NONE, folds=3)
    assert [rows.tolist() for rows, _, _ in parts] == [[0], [1], [2]]
    rows, model, queries = parts[0]
    assert model.used.toarray().tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    # lambda = 1 x 2 / 2: E'E + I = diag(2, 2); user 0's words weigh user 2 by 1/2, user 1 by 0.
    np.testing.assert_allclose(queries, [[0.0, 0.5]], rtol=1e-6)
    scores, ids = model.search(queries, 1)
    assert ids.tolist() == [[0]] and scores[0, 0] == pytest.approx(0.5)  # never b: only user 0 used it
    # A scored user who is no reference user (-1) removes nobody.
    assert fold_scores(SAID[:1], SAID, USED, same=np.array([-1]), l2=1.0, popularity=NONE)[0][1].used.shape == (3, 4)

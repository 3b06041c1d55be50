import numpy as np
import pytest

from recsys_lib import recommend as rec
from recsys_lib.index import exact_search

# Four items on the unit circle at 0, 90, 180 and 270 degrees.
ITEMS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)


def exact(queries, k):
    return exact_search(ITEMS, queries, k)


def test_exclude_and_truncate_keeps_order_and_pads():
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], dtype=np.float32)
    ids = np.array([[3, 1, 2, -1]])
    s, i = rec.exclude_and_truncate(scores, ids, [np.array([1])], 3)
    assert i.tolist() == [[3, 2, -1]]
    assert s[0, :2].tolist() == pytest.approx([0.9, 0.7]) and s[0, 2] == -np.inf


def test_top_n_excludes_seen_items():
    user = np.array([[1, 0.1]], dtype=np.float32)  # closest: item 0, then 1, then 3, then 2
    scores, ids = rec.top_n(exact, user, [np.array([0])], n=2, n_items=4)
    assert ids.tolist() == [[1, 3]]
    assert scores[0].tolist() == pytest.approx([0.1, -0.1])


def test_top_n_when_n_exceeds_unseen_catalogue():
    user = np.array([[1, 0]], dtype=np.float32)
    _, ids = rec.top_n(exact, user, [np.array([0, 1, 2])], n=3, n_items=4)
    assert ids.tolist() == [[3, -1, -1]]


def test_popular_unseen_fallback():
    popularity = np.array([5.0, 10.0, 0.0, 2.0])
    scores, ids = rec.popular_unseen(popularity, [np.array([1]), np.array([], dtype=np.int64)], 2)
    assert ids.tolist() == [[0, 3], [1, 0]]
    np.testing.assert_allclose(scores, [[0.5, 0.2], [1.0, 0.5]])


def test_similar_items_never_returns_the_item_itself():
    scores, ids = rec.similar_items(exact, ITEMS, n=2)
    assert ids[0].tolist() in ([1, 3], [3, 1])
    assert all(row[0] != i and row[1] != i for i, row in enumerate(ids))
    assert scores[0].tolist() == pytest.approx([0.0, 0.0])


def test_rank_users_uses_fallback_for_users_without_history():
    users = np.array([[0, 1], [0, 0]], dtype=np.float32)
    popularity = np.array([1.0, 4.0, 3.0, 2.0])
    fallback = np.array([False, True])  # second user: no usable history
    seen = [np.array([1]), np.array([1])]
    scores, ids = rec.rank_users(exact, users, seen, popularity, 2, batch_size=1, fallback=fallback)
    assert ids[0].tolist() in ([0, 2], [2, 0])  # both at 90 degrees from item 1's direction
    assert ids[1].tolist() == [2, 3]


def test_fallback_per_segment():
    import pandas as pd

    item_index = pd.Index(["a", "b", "c", "d"])
    popularity = np.array([1.0, 4.0, 3.0, 2.0])  # global order: b c d a
    segment_rows = pd.DataFrame(
        {
            "segment": ["kids", "kids", "tiny"],
            "item_id": ["a", "d", "c"],
            "n_users": [5, 2, 1],
            "segment_users": [30, 30, 3],
        }
    )
    by_segment = rec.SegmentPopularity.from_frame(segment_rows, item_index, popularity, min_users=10)
    assert "kids" in by_segment and "tiny" not in by_segment  # too few users: global fallback
    users = np.zeros((4, 2), dtype=np.float32)
    seen = [np.array([], dtype=np.int64), np.array([0]), np.array([], dtype=np.int64), np.array([], dtype=np.int64)]
    segments = np.array(["kids", "kids", "tiny", None], dtype=object)
    scores, ids = rec.rank_users(
        exact, users, seen, popularity, 3, batch_size=1, fallback=np.ones(4, bool),
        segments=segments, segment_popularity=by_segment,
    )  # fmt: skip
    # kids: a (5 users), d (2), then the global order breaks the tie among the rest: b.
    assert ids[0].tolist() == [0, 3, 1]
    assert ids[1].tolist() == [3, 1, 2]  # a seen
    assert ids[2].tolist() == ids[3].tolist() == [1, 2, 3]  # small or no segment: global
    assert scores[0, 0] == pytest.approx(1.0) and scores[0, 1] < 1.0


def test_ranked_rows_drops_padding_and_numbers_ranks():
    keys = np.array(["u1", "u2"])
    ids = np.array([[4, 5, -1], [-1, -1, -1]])
    scores = np.array([[0.5, 0.4, -np.inf], [-np.inf] * 3], dtype=np.float32)
    k, r, i, s = rec.ranked_rows(keys, ids, scores)
    assert k.tolist() == ["u1", "u1"] and r.tolist() == [1, 2] and i.tolist() == [4, 5]


def test_batches_group_users_by_seen_count():
    batches = rec.batches_by_seen(np.array([100, 1, 50, 2]), 2)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 0]]


def test_explain_picks_the_most_similar_history_item():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8]], dtype=np.float32)
    histories = [np.array([0, 1]), np.array([], dtype=np.int64), np.array([1])]
    ids = np.array([[2, 3], [0, 1], [0, -1]])
    reasons = rec.explain(vectors, histories, ids, batch_size=2)
    # User 0: item 2 is closest to 0, item 3 to 1; user 1 has no history (fallback): no reason;
    # user 2's only history item explains its one recommendation; padding stays -1.
    assert reasons.tolist() == [[0, 1], [-1, -1], [1, -1]]

"""The checks the staged tables must pass before publish, on hand-made tables."""

import pandas as pd
import pytest

from recsys_lib import checks
from recsys_lib.recommend import item_similar_table, user_topn_table
from recsys_lib.settings import PublishSettings
from recsys_lib.storage import OutputTable

HISTORIES = pd.DataFrame({"user_id": ["u1", "u2"], "seen": [["a"], ["b", "c"]]})
CATALOGUE = {"a", "b", "c", "d"}


def bounds(min_coverage: float, max_coverage_drop: float, min_overlap: float) -> PublishSettings:
    return PublishSettings(
        max_ndcg_drop=0.05, force=False, backfill=False, keep_versions=7, keep_work_days=14, min_coverage=min_coverage,
        max_coverage_drop=max_coverage_drop, min_overlap=min_overlap,
    )  # fmt: skip


def topn(rows, reasons=None):
    users, ranks, items, scores = zip(*rows)
    return user_topn_table(list(users), list(ranks), list(items), list(scores), "m/1", "2026-01-01", reasons)


GOOD = [("u1", 1, "b", 0.9), ("u1", 2, "c", 0.8), ("u2", 1, "a", 0.7), ("u2", 2, "d", 0.1)]


def test_a_good_table_passes():
    table = topn(GOOD)
    assert checks.check_user_topn(table.to_pandas(), HISTORIES, CATALOGUE, table.schema) == []


@pytest.mark.parametrize(
    "rows, failure",
    [
        ([("u1", 1, "a", 0.9)] + GOOD[1:], "already seen, e.g. user u1 item a"),
        (GOOD[:1] + [("u1", 2, "b", 0.8)] + GOOD[2:], "duplicate (user_id, item_id) pairs"),
        (GOOD[:1] + [("u1", 3, "c", 0.8)] + GOOD[2:], "ranks are not 1..N per user_id (e.g. user_id u1)"),
        (GOOD[:2], "1 active users have no recommendations, e.g. ['u2']"),
        (GOOD[:3] + [("u2", 2, "zz", 0.1)], "1 rows recommend items outside the active catalogue"),
        (GOOD[:3] + [("u2", 2, "d", float("nan"))], "1 scores are not finite"),
    ],
)
def test_checks_name_what_failed(rows, failure):
    table = topn(rows)
    failures = checks.check_user_topn(table.to_pandas(), HISTORIES, CATALOGUE, table.schema)
    assert any(failure in f for f in failures), failures


def test_reason_items_come_from_the_users_history():
    ok = topn(GOOD, ["a", "a", "b", None])  # None: a fallback row
    assert checks.check_user_topn(ok.to_pandas(), HISTORIES, CATALOGUE, ok.schema) == []
    bad = topn(GOOD, ["a", "d", "b", "c"])
    failures = checks.check_user_topn(bad.to_pandas(), HISTORIES, CATALOGUE, bad.schema)
    assert failures == ["1 rows give a reason item outside the user's history"]


def test_schema_must_match_the_contract():
    table = topn(GOOD).drop_columns(["ds"])
    failures = checks.check_user_topn(table.to_pandas(), HISTORIES, CATALOGUE, table.schema)
    assert any("schema differs from the contract" in f for f in failures)


def test_item_similar_checks():
    good = item_similar_table(["a", "a"], [1, 2], ["b", "c"], [0.5, 0.4], "m/1", "2026-01-01")
    assert checks.check_item_similar(good.to_pandas(), CATALOGUE, good.schema) == []
    bad = item_similar_table(["a", "a"], [1, 2], ["a", "c"], [0.5, 0.4], "m/1", "2026-01-01")
    assert checks.check_item_similar(bad.to_pandas(), CATALOGUE) == ["1 rows list an item as similar to itself"]


def test_coverage_and_overlap_against_the_live_version():
    live = topn(GOOD).to_pandas()  # items b, c, a, d: coverage 4/4
    same = checks.check_against_previous(live, live, 4, bounds(0.5, max_coverage_drop=0.5, min_overlap=0.5))
    assert same == []
    assert checks.check_against_previous(live, None, 4, bounds(0.0, 0.5, 0.5)) == []  # first publish
    narrow = topn([("u1", 1, "d", 0.9), ("u2", 1, "c", 0.5)]).to_pandas()  # 2/4 items, no overlap
    failures = checks.check_against_previous(
        narrow, live, 4, bounds(min_coverage=0.6, max_coverage_drop=0.25, min_overlap=0.1)
    )
    assert failures == [
        "catalogue coverage 0.5000 is below publish.min_coverage 0.6",
        "catalogue coverage fell from 1.0000 to 0.5000, more than publish.max_coverage_drop (25%)",
        "mean overlap with the live top-N is 0.0000, below publish.min_overlap 0.1",
    ]
    assert checks.mean_overlap(topn(GOOD[:2] + [("u2", 1, "b", 0.5)]).to_pandas(), live) == pytest.approx(0.5)


def test_check_tables_names_the_table_of_each_failure():
    similar = item_similar_table(["a", "a"], [1, 2], ["a", "c"], [0.5, 0.4], "m/1", "2026-01-01")
    staged = {OutputTable.USER_TOPN: topn(GOOD[:2]), OutputTable.ITEM_SIMILAR: similar}
    failures = checks.check_tables(staged, HISTORIES, pd.Series(sorted(CATALOGUE)), None, bounds(0.0, 0.5, 0.0))
    assert failures == [
        "user_topn: 1 active users have no recommendations, e.g. ['u2']",
        "item_similar: 1 rows list an item as similar to itself",
    ]
    similar = item_similar_table(["a"], [1], ["c"], [0.4], "m/1", "2026-01-01")
    good = {OutputTable.USER_TOPN: topn(GOOD), OutputTable.ITEM_SIMILAR: similar}
    assert checks.check_tables(good, HISTORIES, pd.Series(sorted(CATALOGUE)), None, bounds(0.0, 0.5, 0.0)) == []
    # The live version's lists shared nothing with these: the overlap bound refuses them.
    live = topn([("u1", 1, "d", 0.9), ("u2", 1, "b", 0.5)]).to_pandas()
    failures = checks.check_tables(good, HISTORIES, pd.Series(sorted(CATALOGUE)), live, bounds(0.0, 0.5, 0.1))
    assert failures == ["user_topn: mean overlap with the live top-N is 0.0000, below publish.min_overlap 0.1"]


def test_vector_tables_cover_their_keys_once_with_finite_vectors():
    import numpy as np

    from recsys_lib.embedding import ItemVectors
    from recsys_lib.recommend import item_vectors_table, user_vectors_table

    items = ItemVectors(pd.Index(["a", "b"]), np.eye(2, dtype=np.float32), np.zeros(2, np.float32))
    good = item_vectors_table(items, "m/1")
    assert checks.check_vectors(good, "item_id", good.schema, {"a", "b"}, complete=True) == []
    assert checks.check_vectors(good, "item_id", good.schema, {"a", "b", "c"}, complete=True) == [
        "1 item_ids have no vector, e.g. ['c']"
    ]
    bad = user_vectors_table(["u1", "u1", "zz"], np.array([[1, 0], [np.nan, 0], [0, 1]], np.float32), "m/1")
    assert checks.check_vectors(bad, "user_id", bad.schema, {"u1", "u2"}, complete=False) == [
        "1 duplicate user_id rows",
        "1 user_ids are not expected here, e.g. ['zz']",
        "1 vector values are not finite",
    ]

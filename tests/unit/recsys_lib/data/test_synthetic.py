"""The seeded synthetic generator."""

import pandas as pd

from recsys_lib.data import synthetic


def test_synthetic_is_seeded_and_in_the_contract():
    a = synthetic.generate(n_users=30, n_items=20, seed=3)
    b = synthetic.generate(n_users=30, n_items=20, seed=3)
    c = synthetic.generate(n_users=30, n_items=20, seed=4)
    pd.testing.assert_frame_equal(a[0], b[0])
    assert not a[0].equals(c[0])
    interactions, items = a
    assert interactions["user_id"].nunique() == 30 and len(items) == 20
    assert not interactions.duplicated(["user_id", "item_id"]).any()
    assert set(interactions["item_id"]) <= set(items["item_id"])
    data = synthetic.generate_dataset(n_users=30, n_items=20, seed=3, new_users=5)
    pd.testing.assert_frame_equal(data.interactions, interactions)  # users do not change the rest
    assert data.users["user_id"].tolist() == [f"u{i}" for i in range(35)]
    assert data.users["segment"].notna().all() and data.users["segment"].nunique() > 1

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


def test_the_next_day_edits_adds_and_follows_the_same_tastes():
    interactions, items = synthetic.generate(n_users=200, n_items=60, seed=3)
    ds, events, drop = synthetic.next_day(interactions, items, edited=3, new=2, events=100, seed=1)
    assert ds == (pd.Timestamp(synthetic.last_day(interactions)) + pd.Timedelta(days=1)).date().isoformat()
    day = pd.to_datetime(events["timestamp"], unit="s", utc=True).dt.date.astype(str)
    assert (day == ds).all() and not events.duplicated(["user_id", "item_id"]).any()
    assert set(events["user_id"]) <= set(interactions["user_id"])
    edited, new = drop[drop["item_id"].isin(items["item_id"])], drop[~drop["item_id"].isin(items["item_id"])]
    assert len(edited) == 3 and edited["description"].str.endswith("Now restored.").all()
    assert len(new) == 2 and set(events["item_id"]) <= set(items["item_id"]) | set(new["item_id"])
    assert events["item_id"].isin(new["item_id"]).sum() >= 2  # the new items have their first fans
    # Each day event is on an item of a category the user already had.
    category = items.set_index("item_id")["categories"]
    known = interactions.assign(c=interactions["item_id"].map(category)).groupby("user_id")["c"].agg(set)
    old = events[events["item_id"].isin(items["item_id"])]
    assert all(category[i] in known[u] for u, i in zip(old["user_id"], old["item_id"]))
    again = synthetic.next_day(interactions, items, edited=3, new=2, events=100, seed=1)
    pd.testing.assert_frame_equal(again[1], events)

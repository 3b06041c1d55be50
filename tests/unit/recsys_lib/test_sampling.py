import numpy as np

from recsys_lib.sampling import stable_sample, stable_share


def test_a_stable_sample_is_the_same_keys_whatever_their_order_and_survives_new_keys():
    users = np.array([f"u{i}" for i in range(1_000)])
    chosen = stable_sample(users, 100, seed=7)
    assert len(chosen) == 100 and np.all(np.diff(chosen) > 0)
    shuffled = np.random.default_rng(0).permutation(users)
    assert set(shuffled[stable_sample(shuffled, 100, seed=7)]) == set(users[chosen])
    # 1% more users: at most the newcomers displace members, everyone else stays.
    grown = np.concatenate([users, [f"new{i}" for i in range(10)]])
    kept = set(grown[stable_sample(grown, 100, seed=7)]) & set(users[chosen])
    assert len(kept) >= 90
    # A seeded draw by position, for comparison, keeps about a tenth.
    drawn = set(users[np.random.default_rng(7).choice(len(users), 100, replace=False)])
    redrawn = set(grown[np.random.default_rng(7).choice(len(grown), 100, replace=False)])
    assert len(drawn & redrawn) < 50
    assert set(users[stable_sample(users, 100, seed=8)]) != set(users[chosen])


def test_a_sample_as_large_as_the_keys_is_every_position():
    assert stable_sample(np.array([3, 1, 2]), 3, seed=0).tolist() == [0, 1, 2]
    assert stable_sample(np.array([3, 1, 2]), 0, seed=0).tolist() == [0, 1, 2]
    # A key is hashed as text: the id 30 and the id "30" are the same user.
    as_text = stable_sample(np.array(["30", "10", "20"]), 2, seed=0)
    assert stable_sample(np.array([30, 10, 20]), 2, seed=0).tolist() == as_text.tolist()


def test_a_stable_share_keeps_each_key_on_its_side():
    users = np.array([f"u{i}" for i in range(2_000)])
    taken = stable_share(users, 0.25, seed=3)
    assert 0.2 < taken.mean() < 0.3
    grown = np.concatenate([users[::-1], [f"new{i}" for i in range(100)]])
    np.testing.assert_array_equal(stable_share(grown, 0.25, seed=3)[:2_000], taken[::-1])
    assert not stable_share(users, 0.0, seed=3).any() and stable_share(users, 1.0, seed=3).all()

"""Samples of users that stay the same from night to night.

Evaluate, train's checks and recommend's words model each look at a bounded sample of users
(scoring costs users x items). A sample drawn by position with a seeded generator changes
whenever one user is added, so every night would score (and put through the transformer) a
mostly new sample. ``stable_sample`` keeps the ``n`` keys of smallest seeded hash (bottom-k
sampling): the same keys give the same sample in any order, and a night that adds users swaps
in only those whose hash falls below the sample's largest, so most of the sample, and the
cached encoder outputs of its words, carry over; night-over-night numbers move with the data,
not with the draw.

Tests: tests/unit/recsys_lib/test_sampling.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def stable_sample(keys, n: int, seed: int) -> np.ndarray:
    """Sorted positions in ``keys`` of at most ``n`` of them (``n`` <= 0: all): those whose
    ``key_hashes`` are smallest."""
    if n <= 0 or len(keys) <= n:
        return np.arange(len(keys))
    return np.sort(np.argpartition(key_hashes(keys, seed), n - 1)[:n])


def stable_share(keys, share: float, seed: int) -> np.ndarray:
    """[n] bool: about ``share`` of the keys, each chosen by its own hash alone (``seed``), so a
    key keeps its side of the split however many others come and go."""
    hashes = key_hashes(keys, seed)
    return np.ones(len(hashes), bool) if share >= 1 else hashes < np.uint64(int(max(share, 0.0) * 2**64))


def key_hashes(keys, seed: int) -> np.ndarray:
    """[n] uint64: SipHash of each key's text under ``seed`` (the id 30 and the id "30" hash alike)."""
    text = pd.Index(keys).astype(str).to_numpy(dtype=object)  # no copy of what is text already
    return pd.util.hash_array(text, hash_key=str(seed).rjust(16, "0")[-16:], categorize=False)

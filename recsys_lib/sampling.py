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
    """Sorted positions in ``keys`` of at most ``n`` of them (``n`` <= 0: all): those whose hash
    (SipHash of the key's text under ``seed``) is smallest."""
    keys = np.asarray(keys)
    if n <= 0 or len(keys) <= n:
        return np.arange(len(keys))
    hashes = pd.util.hash_array(keys.astype(str).astype(object), hash_key=str(seed).rjust(16, "0")[-16:])
    return np.sort(np.argpartition(hashes, n - 1)[:n])

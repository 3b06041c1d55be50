"""Seeded synthetic interactions and catalogue, in the input contract, for tests and scale runs.

Items belong to topics; an item's title, categories and tags are drawn from its topic's words, so
text carries the same signal as behaviour. Users prefer a few topics; within a topic, items are
picked with Zipf-like popularity. A user's segment (the optional users input) is their favourite
topic, so a segment's popular items differ from the global ones. Same seed, same frames.
Vectorised: a million users and items take seconds.
Tests: tests/unit/recsys_lib/data/test_synthetic.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_lib.schema import (
    CATEGORIES_COL,
    DESCRIPTION_COL,
    EVENT_TYPE_COL,
    ITEM_COL,
    RATING_COL,
    SEGMENT_COL,
    TAGS_COL,
    TIMESTAMP_COL,
    TITLE_COL,
    UPDATED_AT_COL,
    USER_COL,
)

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qui", "do", "fe", "gu", "ha", "jo"]
START_EPOCH = 1_600_000_000  # 2020-09-13


def _words(rng: np.random.Generator, n: int) -> list[str]:
    parts = rng.choice(_SYLLABLES, size=(n, 3))
    return ["".join(p) for p in parts]


@dataclass(frozen=True)
class SyntheticDataset:
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame  # user_id, segment: every user with interactions, then the new ones


def generate(
    n_users: int = 1000,
    n_items: int = 500,
    interactions_per_user: float = 20.0,
    n_topics: int = 12,
    seed: int = 0,
    days: int = 30,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items) frames in the input contract; see ``generate_dataset``."""
    data = generate_dataset(n_users, n_items, interactions_per_user, n_topics, seed, days)
    return data.interactions, data.items


def generate_dataset(
    n_users: int = 1000,
    n_items: int = 500,
    interactions_per_user: float = 20.0,
    n_topics: int = 12,
    seed: int = 0,
    days: int = 30,
    new_users: int = 0,
) -> SyntheticDataset:
    """Interactions, items and users in the input contract.

    Args:
        n_users, n_items: sizes; every item gets a topic, a title, categories and tags.
        interactions_per_user: mean events per user (at least 1 each).
        n_topics: number of latent topics shared by text and behaviour.
        days: events are spread over this many days before ``START_EPOCH + days``.
        new_users: users registered with a segment but no interaction yet (cold users).
    """
    rng = np.random.default_rng(seed)
    topic_names = _words(rng, n_topics)
    topic_vocab = np.array([_words(rng, 8) for _ in range(n_topics)])  # [topics, 8]

    item_topic = rng.integers(0, n_topics, size=n_items)
    w = rng.integers(0, 8, size=(n_items, 3))
    titles = [
        f"{topic_vocab[t, a].title()} {topic_vocab[t, b]} {i}"
        for i, (t, a, b) in enumerate(zip(item_topic, w[:, 0], w[:, 1]))
    ]
    items = pd.DataFrame({
        ITEM_COL: [f"i{i}" for i in range(n_items)],
        TITLE_COL: titles,
        DESCRIPTION_COL: [f"A story about {topic_vocab[t, c]}." for t, c in zip(item_topic, w[:, 2])],
        CATEGORIES_COL: [topic_names[t] for t in item_topic],
        TAGS_COL: ["|".join(topic_vocab[t, [a, c]]) for t, a, c in zip(item_topic, w[:, 0], w[:, 2])],
        UPDATED_AT_COL: START_EPOCH,
    })

    # Popularity within a topic follows 1/rank.
    order = np.argsort(item_topic, kind="stable")
    sorted_topics = item_topic[order]
    starts = np.searchsorted(sorted_topics, np.arange(n_topics))
    ends = np.searchsorted(sorted_topics, np.arange(n_topics), side="right")

    counts = np.maximum(1, rng.poisson(interactions_per_user, size=n_users))
    user_of_event = np.repeat(np.arange(n_users), counts)
    n_events = len(user_of_event)
    # Each user likes two topics; 80% of events come from the first, 15% the second, 5% anywhere.
    fav = rng.integers(0, n_topics, size=(n_users, 2))
    choice = rng.random(n_events)
    topic = np.where(choice < 0.8, fav[user_of_event, 0], fav[user_of_event, 1])
    anywhere = choice >= 0.95
    topic[anywhere] = rng.integers(0, n_topics, size=anywhere.sum())
    size = ends[topic] - starts[topic]
    empty = size == 0
    # Zipf-ish rank within the topic: floor(size ** u) - 1 favours low ranks.
    rank = np.floor(np.power(np.maximum(size, 1), rng.random(n_events))).astype(np.int64) - 1
    item = order[np.minimum(starts[topic] + rank, n_items - 1)]
    item[empty] = rng.integers(0, n_items, size=empty.sum())

    span = days * 86_400
    ts = START_EPOCH + np.sort(rng.integers(0, span, size=n_events))
    rng.shuffle(ts)  # decouple time from user id, then order within each user
    frame = pd.DataFrame({USER_COL: user_of_event, ITEM_COL: item, TIMESTAMP_COL: ts})
    frame = frame.sort_values([USER_COL, TIMESTAMP_COL], kind="stable")
    frame = frame.drop_duplicates([USER_COL, ITEM_COL], keep="first")
    interactions = pd.DataFrame({
        USER_COL: "u" + frame[USER_COL].astype(str),
        ITEM_COL: "i" + frame[ITEM_COL].astype(str),
        TIMESTAMP_COL: frame[TIMESTAMP_COL].astype("int64"),
        EVENT_TYPE_COL: "view",
        RATING_COL: rng.integers(1, 6, size=len(frame)).astype(float),
    }).reset_index(drop=True)
    # New users draw their segment from their own generator, so the other frames stay the same.
    new_topic = np.random.default_rng([seed, 1]).integers(0, n_topics, size=new_users)
    users = pd.DataFrame({
        USER_COL: [f"u{u}" for u in range(n_users + new_users)],
        SEGMENT_COL: [topic_names[t] for t in np.concatenate([fav[:, 0], new_topic])],
    })
    return SyntheticDataset(interactions, items, users)


def last_day(interactions: pd.DataFrame) -> str:
    """The logical date of the latest event (UTC), i.e. the first ds that accepts every event."""
    return pd.to_datetime(interactions[TIMESTAMP_COL].max(), unit="s", utc=True).date().isoformat()


def next_day(
    interactions: pd.DataFrame, items: pd.DataFrame, edited: int, new: int, events: int, seed: int = 0
) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """(ds, interactions, items drop) of the day after the latest event: a routine night's drop.

    ``edited`` catalogue items get a new description; ``new`` items arrive (an existing item's
    text under a new id), each rated by up to 5 users who liked the item it copies; ``events``
    interactions of existing users fall on that day, each on a popular item of the category of
    one of the user's own items (so the day follows the same tastes as the history)."""
    rng = np.random.default_rng(seed)
    day = pd.Timestamp(last_day(interactions), tz="UTC") + pd.Timedelta(days=1)
    start = int(day.timestamp())
    category = items.set_index(ITEM_COL)[CATEGORIES_COL].reindex(interactions[ITEM_COL]).fillna("").to_numpy()
    order = np.argsort(category, kind="stable")
    picks = rng.integers(0, len(interactions), size=events)
    low = np.searchsorted(category[order], category[picks], "left")
    high = np.searchsorted(category[order], category[picks], "right")
    same_category = order[low + (rng.random(events) * (high - low)).astype(np.int64)]
    day_events = pd.DataFrame({
        USER_COL: interactions[USER_COL].to_numpy()[picks],
        ITEM_COL: interactions[ITEM_COL].to_numpy()[same_category],
    })  # fmt: skip

    shown = rng.choice(len(items), size=min(len(items), edited + new), replace=False)
    changed = items.iloc[shown[:edited]].assign(
        **{DESCRIPTION_COL: lambda f: f[DESCRIPTION_COL] + " Now restored.", UPDATED_AT_COL: start}
    )
    originals = items.iloc[shown[edited:]]
    fresh = originals.assign(**{ITEM_COL: [f"new-{day.date()}-{k}" for k in range(len(originals))],
                                UPDATED_AT_COL: start})  # fmt: skip
    fans = interactions[interactions[ITEM_COL].isin(originals[ITEM_COL])].groupby(ITEM_COL).head(5)
    fans = fans.assign(**{ITEM_COL: fans[ITEM_COL].map(dict(zip(originals[ITEM_COL], fresh[ITEM_COL])))})
    day_events = pd.concat([day_events, fans[[USER_COL, ITEM_COL]]], ignore_index=True)
    day_events = day_events.drop_duplicates([USER_COL, ITEM_COL]).reset_index(drop=True)
    day_events[TIMESTAMP_COL] = start + np.sort(rng.integers(0, 86_400, size=len(day_events)))
    day_events[EVENT_TYPE_COL] = "view"
    day_events[RATING_COL] = rng.integers(1, 6, size=len(day_events)).astype(float)
    return day.date().isoformat(), day_events, pd.concat([changed, fresh], ignore_index=True)

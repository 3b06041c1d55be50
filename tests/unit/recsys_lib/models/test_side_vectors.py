"""Side vectors (an image embedding, say) fused into the item tower by a gated projection: they
help brand-new items when they carry what the text lacks, and do not hurt when they are noise."""

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_lib.models.examples import build_examples
from recsys_lib.models.training import train_two_tower
from recsys_lib.models.two_tower import NO_ID, TokenizedDocuments, TwoTowerModel, embed_users, history_matrix

N_ITEMS, N_WARM, SIDE_DIM = 64, 48, 8


def topics() -> np.ndarray:
    return np.arange(N_ITEMS) % 2


def two_topic_users() -> pd.DataFrame:
    """Users who stay in one topic, among the warm items only: the last 16 items are brand new."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        topic_items = np.flatnonzero(topics()[:N_WARM] == u % 2)
        for t, item in enumerate(rng.choice(topic_items, size=6, replace=False)):
            rows.append((f"u{u}", str(item), t))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def cold_precision(tiny_encoder, settings, texts: list[str], side: np.ndarray | None) -> float:
    """Share of each user's top 4 brand-new items that are of the user's topic (0.5: chance)."""
    items = pd.Index([str(i) for i in range(N_ITEMS)])
    interactions = two_topic_users()
    side_t = None if side is None else torch.as_tensor(side, dtype=torch.float32)
    model, tokenizer = TwoTowerModel.from_encoder(
        str(tiny_encoder), 5, 16, 0.1, id_vocab=items[:N_WARM], seed=3, side_dim=0 if side is None else SIDE_DIM
    )
    cfg = settings.train.__class__(**{**settings.train.__dict__, "frozen_steps": 150, "max_steps": 0,
                                      "batch_size": 32})  # fmt: skip
    docs = TokenizedDocuments.from_texts(tokenizer, texts, 16)
    id_rows = model.id_rows(items)
    _, pooled = train_two_tower(model, docs, id_rows, build_examples(interactions, items, 5), cfg,
                                torch.device("cpu"), ks=(10,), side=side_t)  # fmt: skip
    vectors, bias = model.items_from_pooled(pooled, torch.as_tensor(id_rows), side_t)
    histories = [items.get_indexer(g["item_id"]) for _, g in interactions.groupby("user_id", sort=True)]
    users = embed_users(model, vectors, history_matrix(histories, 5))
    cold = np.arange(N_WARM, N_ITEMS)
    assert (id_rows[cold] == NO_ID).all()
    scores = model.score(users, vectors[cold], bias[cold]).detach().numpy()
    user_topic = np.array([int(u[1:]) % 2 for u in sorted(interactions["user_id"].unique())])
    top = cold[np.argsort(-scores, axis=1)[:, :4]]
    return float((topics()[top] == user_topic[:, None]).mean())


@pytest.mark.slow
def test_side_vectors_place_new_items_the_text_cannot(tiny_encoder, settings):
    texts = [f"item number {i}" for i in range(N_ITEMS)]  # says nothing about the topic
    rng = np.random.default_rng(1)
    signal = np.eye(SIDE_DIM)[topics()] + 0.3 * rng.standard_normal((N_ITEMS, SIDE_DIM))
    signal[5] = 0.0  # an item without a side vector is its text alone
    text_only = cold_precision(tiny_encoder, settings, texts, None)
    fused = cold_precision(tiny_encoder, settings, texts, signal)
    print(f"brand-new items in the user's topic: text {text_only:.3f}, text + informative side {fused:.3f}")
    assert fused >= 0.9 and fused >= text_only + 0.25


@pytest.mark.slow
def test_noise_side_vectors_do_not_hurt(tiny_encoder, settings):
    texts = [f"{'red apple' if t == 0 else 'blue ocean'} {i}" for i, t in enumerate(topics())]
    noise = np.random.default_rng(2).standard_normal((N_ITEMS, SIDE_DIM))
    text_only = cold_precision(tiny_encoder, settings, texts, None)
    fused = cold_precision(tiny_encoder, settings, texts, noise)
    print(f"brand-new items in the user's topic: text {text_only:.3f}, text + noise side {fused:.3f}")
    assert text_only >= 0.7  # the text carries the topic here
    assert fused >= text_only - 0.05

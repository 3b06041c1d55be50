import numpy as np
import pandas as pd
import pytest
import torch

from recsys_lib.models.training import build_examples, build_validation, train_two_tower, warmup_linear_decay
from recsys_lib.models.two_tower import PAD, TokenizedDocuments, TwoTowerModel


def test_build_examples_by_hand():
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u3"],
            "item_id": ["b", "a", "c", "c", "zz", "a"],  # zz is not in the catalogue
            "timestamp": [20, 10, 30, 5, 6, 1],
        }
    )
    ex = build_examples(interactions, pd.Index(["a", "b", "c"]), history_length=2)
    # u1 in time order: a(0) b(1) c(2) -> (a -> b), (a b -> c); u2: only c is known; u3: one event.
    assert ex.history.tolist() == [[PAD, 0], [0, 1]]
    assert ex.target.tolist() == [1, 2]


def test_build_examples_with_no_interactions():
    ex = build_examples(pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []}), pd.Index(["a"]), 3)
    assert len(ex) == 0 and ex.history.shape == (0, 3)


def test_build_validation_holds_out_the_marked_event():
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u3"],
            "item_id": ["a", "b", "c", "b", "c", "a"],
            "timestamp": [1, 2, 3, 1, 2, 1],
            "is_validation": [False, False, True, False, True, True],
        }
    )
    train, validation = build_validation(interactions, pd.Index(["a", "b", "c"]), history_length=3)
    assert len(train) == 3 and not train["is_validation"].any()
    # u1: history a b -> c; u2: b -> c; u3 has nothing before its event and is left out.
    assert validation.history.tolist() == [[PAD, 0, 1], [PAD, PAD, 1]]
    assert validation.target.tolist() == [2, 2]
    assert [e.tolist() for e in validation.exclude] == [[0, 1], [1]]
    one = validation.sample(1, seed=0)
    assert len(one) == 1 and one.target.tolist()[0] == 2 and validation.sample(5, seed=0) is validation


@pytest.mark.slow
def test_training_reduces_the_loss_and_is_seeded(tiny_encoder, settings):
    # Two topics; users stay in one topic, so the next item is predictable from text and history.
    texts = [f"red apple {i}" for i in range(8)] + [f"blue ocean {i}" for i in range(8)]
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        topic = u % 2
        for t, item in enumerate(rng.choice(8, size=6, replace=False) + 8 * topic):
            rows.append((f"u{u}", str(item), t))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.Index([str(i) for i in range(16)])
    cfg = settings.train.__class__(
        **{**settings.train.__dict__, "max_steps": 30, "batch_size": 16, "refresh_every": 10}
    )

    def fit():
        model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 5, 16, 0.1, id_vocab=items[:12], seed=3)
        docs = TokenizedDocuments.from_texts(tokenizer, texts, 16)
        events = interactions.assign(is_validation=interactions["timestamp"] == 5)
        train, validation = build_validation(events, items, 5)
        ex = build_examples(train, items, 5)
        report = train_two_tower(model, docs, model.id_rows(items), ex, cfg, torch.device("cpu"), validation)
        return model, report

    _, first = fit()
    _, second = fit()
    assert first["train_loss"] < first["first_loss"]
    assert first["train_loss"] == pytest.approx(second["train_loss"])  # same seed, same run
    assert 0 < first["best_step"] <= first["steps"] and "val_ndcg_at_10" in first
    assert first["val_ndcg_at_10"] == pytest.approx(second["val_ndcg_at_10"])


def test_learning_rate_schedule_by_hand():
    factor = warmup_linear_decay(start=10, end=20, warmup_fraction=0.2)  # 2 warm-up steps
    assert [factor(s) for s in (0, 9, 10, 11, 15, 19, 20)] == [0.0, 0.0, 0.5, 1.0, 0.625, 0.125, 0.0]


@pytest.mark.slow
def test_frozen_steps_train_the_heads_and_leave_the_encoder_as_pretrained(tiny_encoder, settings):
    texts = [f"item {i}" for i in range(6)]
    rows = [(f"u{u}", str((u + t) % 6), t) for u in range(12) for t in range(4)]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.Index([str(i) for i in range(6)])

    def fit(max_steps: int):
        model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 8, 0.1, id_vocab=items, seed=1)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = settings.train.__class__(
            **{**settings.train.__dict__, "frozen_steps": 5, "max_steps": max_steps, "batch_size": 8}
        )
        docs = TokenizedDocuments.from_texts(tokenizer, texts, 8)
        examples = build_examples(interactions, items, 3)
        report = train_two_tower(model, docs, model.id_rows(items), examples, cfg, torch.device("cpu"))
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        return report, changed

    report, changed = fit(max_steps=0)
    assert report["steps"] == 5
    assert not any(k.startswith("item_tower.encoder.") for k in changed)
    assert {"item_tower.projection.weight", "item_tower.id_embedding.weight", "log_temperature"} <= changed
    report, changed = fit(max_steps=3)
    assert report["steps"] == 8 and any(k.startswith("item_tower.encoder.") for k in changed)


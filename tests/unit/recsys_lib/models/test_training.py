"""The training loop on a tiny random encoder: it learns, it is seeded, its phases and schedule."""

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_lib.models.examples import build_examples, build_validation, prepare_serving_data, prepare_training_data
from recsys_lib.models.inference import cpu_bf16
from recsys_lib.models.train_task import TwoTowerTrainTask
from recsys_lib.models.training import (
    clip_gradients,
    train_nightly,
    train_two_tower,
    validation_items,
    validation_metrics,
    warmup_linear_decay,
)
from recsys_lib.models.two_tower import TokenizedDocuments, TwoTowerModel, embed_text, embed_users, history_matrix


def pooled_outputs(model, docs, cfg):
    """The transformer's pooled outputs at the precision training ran in (bf16 autocast on a CPU
    with bf16 units, by ``cpu_precision``), so they compare with what training cached."""
    return embed_text(model, docs, 64, "cpu", pooled=True, cpu_bf16=cpu_bf16(cfg.cpu_precision, torch.device("cpu")))


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
        report, pooled = train_two_tower(model, docs, model.id_rows(items), ex, cfg, torch.device("cpu"), validation,
                                         ks=(10,))  # fmt: skip
        assert model.item_tower.encoder.config._attn_implementation == "sdpa"  # eager only inside its steps
        # The outputs it hands back are those of the restored (best) state: nobody re-encodes.
        torch.testing.assert_close(pooled, pooled_outputs(model, docs, cfg))
        return model, report

    _, first = fit()
    _, second = fit()
    assert first["train_loss"] < first["first_loss"]
    assert first["train_loss"] == pytest.approx(second["train_loss"])  # same seed, same run
    assert 0 < first["best_step"] <= first["steps"] and "val_ndcg_at_10" in first
    assert first["val_ndcg_at_10"] == pytest.approx(second["val_ndcg_at_10"])


def test_validation_items_are_the_most_popular_and_every_held_out_one():
    targets = np.array([0, 0, 0, 1, 1, 2, 3])
    assert validation_items(targets, np.array([5, 1]), 6, limit=2).tolist() == [0, 1, 5]
    assert validation_items(targets, np.array([5]), 6, limit=6) is None  # the catalogue fits
    assert validation_items(targets, np.array([5]), 6, limit=0) is None  # 0: always all


def test_past_validation_items_checkpoints_encode_part_and_the_kept_state_all_of_the_catalogue(
    tiny_encoder, settings, monkeypatch
):
    """Between fine-tuning checkpoints only the ranked items are encoded again; the outputs handed
    back are still every document's, from the state kept."""
    texts, items, interactions = six_item_cycle(events_per_user=5)
    # Two users held out, both on item 4: the ranked items are the 2 most popular and item 4.
    held = (interactions["timestamp"] == 4) & interactions["user_id"].isin(["u0", "u6"])
    events = interactions.assign(is_validation=held)
    train, validation = build_validation(events, items, 3)
    examples = build_examples(train, items, 3)
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 8, 0.1, id_vocab=items, seed=1)
    docs = TokenizedDocuments.from_texts(tokenizer, texts, 8)
    cfg = settings.train.__class__(**{**settings.train.__dict__, "frozen_steps": 4, "max_steps": 8, "batch_size": 8,
                                      "refresh_every": 4, "validation_items": 2, "refresh_ranked_only": True,
                                      "learning_rate": 1e-3})  # fmt: skip
    ranked = validation_items(examples.target, validation.target, len(items), 2)
    assert ranked is not None and 4 in ranked and len(ranked) == 3
    before = pooled_outputs(model, docs, cfg)
    refreshed = []  # what each refresh encoded: None, every document
    refresh = TwoTowerTrainTask.refresh

    def spy(task, rows=None):
        refreshed.append(rows)
        return refresh(task, rows)

    monkeypatch.setattr(TwoTowerTrainTask, "refresh", spy)
    cfg = settings.train.__class__(**{**cfg.__dict__, "patience": 1, "max_steps": 12})
    report, pooled = train_two_tower(model, docs, model.id_rows(items), examples, cfg, torch.device("cpu"), validation,
                                     ks=(3,))  # fmt: skip
    # The task's first encoding (all), the checkpoints at steps 8 and 12 (the ranked items); step 12
    # brought no gain, so early stopping (patience 1) ended the run there and the state of step 8,
    # measured on part of the catalogue, was encoded whole.
    assert refreshed[0] is None and all(np.array_equal(rows, ranked) for rows in refreshed[1:3]), refreshed
    assert refreshed[3:] == [None] and report["steps"] == 12, (refreshed, report)
    assert report["best_step"] == 8, report  # a fine-tuned state was kept ...
    assert not torch.allclose(pooled, before)  # ... whose transformer moved
    torch.testing.assert_close(pooled, pooled_outputs(model, docs, cfg))
    text, rows = model.item_tower.project(pooled), torch.as_tensor(model.id_rows(items))
    vectors, bias = model.item_tower.combine(text, rows), model.item_tower.bias(text, rows)
    everything = validation_metrics(model, vectors, bias, validation, (3,))
    assert validation_metrics(model, vectors, bias, validation, (3,), ranked=np.arange(len(items))) == everything
    # The default: validation ranks the same items, and every checkpoint encodes the catalogue.
    refreshed.clear()
    model, _ = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 8, 0.1, id_vocab=items, seed=1)
    cfg = settings.train.__class__(**{**cfg.__dict__, "refresh_ranked_only": False})
    train_two_tower(model, docs, model.id_rows(items), examples, cfg, torch.device("cpu"), validation, ks=(3,))
    assert len(refreshed) >= 3 and all(rows is None for rows in refreshed), refreshed


def test_sparse_and_dense_gradients_are_clipped_together_as_torch_clips_dense_ones():
    torch.manual_seed(0)
    sparse, dense = torch.nn.Embedding(10, 4, sparse=True), torch.nn.Linear(4, 3)
    reference = torch.nn.Embedding(10, 4)
    reference.weight.data.copy_(sparse.weight.data)
    for table in (sparse, reference):
        dense.zero_grad()
        (10 * dense(table(torch.tensor([1, 1, 3]))).pow(2).sum()).backward()
        if table is reference:
            torch.nn.utils.clip_grad_norm_([*reference.parameters(), *dense.parameters()], 1.0)
            expected = [reference.weight.grad, dense.weight.grad.clone(), dense.bias.grad.clone()]
        else:
            clip_gradients([*sparse.parameters(), *dense.parameters()], 1.0)
            clipped = [sparse.weight.grad.to_dense(), dense.weight.grad.clone(), dense.bias.grad.clone()]
    for a, b in zip(clipped, expected, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in clipped])) == pytest.approx(1.0, rel=1e-4)


def test_learning_rate_schedule_by_hand():
    factor = warmup_linear_decay(start=10, end=20, warmup_fraction=0.2)  # 2 warm-up steps
    assert [factor(s) for s in (0, 9, 10, 11, 15, 19, 20)] == [0.0, 0.0, 0.5, 1.0, 0.625, 0.125, 0.0]


def six_item_cycle(events_per_user: int):
    """(texts, item ids, interactions): 12 users, each walking the 6 items in a cycle."""
    rows = [(f"u{u}", str((u + t) % 6), t) for u in range(12) for t in range(events_per_user)]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return [f"item {i}" for i in range(6)], pd.Index([str(i) for i in range(6)]), interactions


@pytest.mark.slow
def test_frozen_steps_train_the_heads_and_leave_the_encoder_as_pretrained(tiny_encoder, settings):
    texts, items, interactions = six_item_cycle(events_per_user=4)

    def fit(max_steps: int):
        model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 8, 0.1, id_vocab=items, seed=1)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = settings.train.__class__(
            **{**settings.train.__dict__, "frozen_steps": 5, "max_steps": max_steps, "batch_size": 8}
        )
        docs = TokenizedDocuments.from_texts(tokenizer, texts, 8)
        examples = build_examples(interactions, items, 3)
        report, pooled = train_two_tower(model, docs, model.id_rows(items), examples, cfg, torch.device("cpu"),
                                         ks=(10,))  # fmt: skip
        torch.testing.assert_close(pooled, pooled_outputs(model, docs, cfg))
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        return report, changed

    report, changed = fit(max_steps=0)
    assert report["steps"] == 5
    assert not any(k.startswith("item_tower.encoder.") for k in changed)
    assert {"item_tower.projection.weight", "item_tower.id_embedding.weight", "log_temperature"} <= changed
    report, changed = fit(max_steps=3)
    assert report["steps"] == 8 and any(k.startswith("item_tower.encoder.") for k in changed)



@pytest.mark.slow
def test_the_served_model_learns_from_everything_the_evaluation_model_never_saw(tiny_encoder, settings):
    """An item that only appears in the latest events (held out from the evaluation model) gets
    an ID in the served model, and its behaviour moves it: red-apple users took to a blue item."""
    texts = [f"red apple {i}" for i in range(8)] + [f"blue ocean {i}" for i in range(8)]
    items = pd.Index([str(i) for i in range(16)])
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        for t, item in enumerate(rng.choice(8, size=6, replace=False) + 8 * (u % 2)):
            rows.append((f"u{u}", str(item), t))
    train_side = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).query("item_id != '15'")
    late = pd.DataFrame([(f"u{u}", "15", 10) for u in range(0, 40, 2)], columns=["user_id", "item_id", "timestamp"])
    everything = pd.concat([train_side, late], ignore_index=True)
    train = prepare_training_data(items, train_side.assign(is_validation=train_side["timestamp"] == 5), 5, 100, 0)
    served_data = prepare_serving_data(items, everything, 5)
    assert "15" not in train.id_vocab and "15" in served_data.id_vocab
    cfg = settings.train.__class__(**{**settings.train.__dict__, "max_steps": 6, "batch_size": 16, "refit_steps": 40})
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 5, 16, 0.1, id_vocab=train.id_vocab, seed=3)
    docs = TokenizedDocuments.from_texts(tokenizer, texts, 16)
    # The served model reads one document the evaluation model does not (a held-out tag).
    served_docs = TokenizedDocuments.from_texts(tokenizer, texts[:3] + ["red apple 3 crunchy"] + texts[4:], 16)
    models = train_nightly(model, docs, items, train, served_data, cfg, torch.device("cpu"), ks=(10,),
                           served_documents=served_docs)  # fmt: skip
    torch.testing.assert_close(models.evaluation_pooled, pooled_outputs(models.evaluation, docs, cfg))
    torch.testing.assert_close(models.pooled, pooled_outputs(models.served, served_docs, cfg))
    assert not torch.equal(models.pooled[3], models.evaluation_pooled[3])
    assert models.served.item_tower.encoder is models.evaluation.item_tower.encoder  # frozen, shared
    assert models.report["refit.steps"] == 40 and models.report["refit.id_vocab"] == 16
    assert models.evaluation.id_rows(["15"]).tolist() == [0]  # the evaluation model never saw it
    row = models.served.id_rows(["15"])[0]
    assert row > 0 and models.served.item_tower.id_embedding.weight[row].abs().sum() > 0

    def red_user_score(m):
        vectors, bias = m.items_from_pooled(models.pooled, torch.as_tensor(m.id_rows(items)))
        user = embed_users(m, vectors, history_matrix([np.arange(5)], 5))
        scores = m.score(user, vectors, bias)[0]
        return (scores[15] - scores[8:15].mean()).item()  # the late item against the other blue ones

    assert red_user_score(models.served) > red_user_score(models.evaluation)


@pytest.mark.slow
def test_a_warm_start_that_training_cannot_beat_is_kept(tiny_encoder, settings):
    texts, items, interactions = six_item_cycle(events_per_user=5)
    events = interactions.assign(is_validation=interactions["timestamp"] == 4)
    train, validation = build_validation(events, items, 3)
    examples = build_examples(train, items, 3)
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 8, 0.1, id_vocab=items, seed=1)
    docs = TokenizedDocuments.from_texts(tokenizer, texts, 8)
    good = settings.train.__class__(**{**settings.train.__dict__, "frozen_steps": 30, "max_steps": 0, "batch_size": 8})
    train_two_tower(model, docs, model.id_rows(items), examples, good, torch.device("cpu"), validation, ks=(3,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # A night whose training only makes things worse: a learning rate that scrambles the heads.
    wild = settings.train.__class__(**{**good.__dict__, "frozen_steps": 12, "refresh_every": 6, "seed": 9,
                                       "head_learning_rate": 5.0, "id_learning_rate": 5.0})  # fmt: skip
    report, _ = train_two_tower(model, docs, model.id_rows(items), examples, wild, torch.device("cpu"), validation,
                             ks=(3,), keep_initial=True)  # fmt: skip
    assert report["best_step"] == 0 and report["kept_warm_start"] == 1.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

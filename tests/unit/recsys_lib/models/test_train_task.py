"""The training objective on a tiny random encoder: what each phase's batch trains, and logQ."""

import dataclasses

import numpy as np
import pytest
import torch

from recsys_lib.models.train_task import Batch, TwoTowerTrainTask
from recsys_lib.models.two_tower import PAD, TokenizedDocuments, TwoTowerModel

TEXTS = ["red apple", "green apple", "blue ocean", "deep ocean"]


@pytest.fixture
def task(tiny_encoder, settings):
    def make(**train):
        model, tokenizer = TwoTowerModel.from_encoder(
            str(tiny_encoder), history_length=2, max_length=8, temperature=0.1, id_vocab=["0", "1", "2"], seed=0
        )
        docs = TokenizedDocuments.from_texts(tokenizer, TEXTS, 8)
        cfg = dataclasses.replace(settings.train, extra_negatives=4, **train)
        targets = np.array([0, 0, 1])
        return TwoTowerTrainTask(model.train(), docs, model.id_rows(["0", "1", "2", "new"]), targets, cfg, 2, "cpu")

    return make


BATCH = dict(history=torch.tensor([[PAD, 0], [2, 1]]), target=torch.tensor([1, 0]), negatives=torch.tensor([0, 1]))


def encoder_grads(model):
    return [p.grad for p in model.item_tower.encoder.parameters()]


def test_logq_counts_in_batch_positives_and_uniform_extras(task):
    t = task()
    assert t.warm_items.tolist() == [0, 1]  # negatives come from items that are someone's positive
    # Expected count per step: 2 examples x [2, 1, 0, 0] / 3 + 4 extras x [1, 1, 0, 0] / 2.
    expected = np.log([2 * 2 / 3 + 2, 2 * 1 / 3 + 2])
    np.testing.assert_allclose(t.log_q[:2].numpy(), expected, rtol=1e-6)


def test_a_frozen_step_leaves_the_transformer_alone(task):
    t = task()
    out = t(Batch(**BATCH, encoded=0))
    assert out.encoder_loss is None and torch.isfinite(out.loss)
    out.total.backward()
    assert all(g is None for g in encoder_grads(t.model))
    assert t.model.item_tower.projection.weight.grad.abs().sum() > 0


def test_a_fine_tuning_step_trains_the_transformer_on_the_encoded_items(task):
    t = task()
    out = t(Batch(**BATCH, encoded=2))
    assert out.encoder_loss is not None and out.total.item() == pytest.approx(out.loss.item() + out.encoder_loss.item())
    out.total.backward()
    assert any(g is not None and g.abs().sum() > 0 for g in encoder_grads(t.model))


def test_id_dropout_hides_ids_from_the_loss(task):
    t = task(id_dropout=1.0)
    t(Batch(**BATCH, encoded=0)).total.backward()
    grad = t.model.item_tower.id_embedding.weight.grad
    assert grad[1:].abs().sum() == 0  # every item's ID row hidden: only the text places items
    t = task(id_dropout=0.0)
    t(Batch(**BATCH, encoded=0)).total.backward()
    assert t.model.item_tower.id_embedding.weight.grad[1:3].abs().sum() > 0

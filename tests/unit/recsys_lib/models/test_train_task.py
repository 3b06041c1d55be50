"""The training objective on a tiny random encoder: what each phase's batch trains, and logQ."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_lib.models.train_task import Batch, SearchPairs, TwoTowerTrainTask, eager_attention_on_cpu
from recsys_lib.models.two_tower import PAD, TokenizedDocuments, TwoTowerModel

TEXTS = ["red apple", "green apple", "blue ocean", "deep ocean"]


@pytest.fixture
def task(tiny_encoder, settings):
    def make(pairs=None, kinds=("search",), **train):
        model, tokenizer = TwoTowerModel.from_encoder(
            str(tiny_encoder), history_length=2, max_length=8, temperature=0.1, id_vocab=["0", "1", "2"], seed=0
        )
        docs = TokenizedDocuments.from_texts(tokenizer, TEXTS, 8)
        cfg = dataclasses.replace(settings.train, extra_negatives=4, **train)
        targets = np.array([0, 0, 1])
        ids = pd.Index(["0", "1", "2", "new"])
        text = {} if pairs is None else {kind: SearchPairs.from_frame(pairs, ids, tokenizer, 8) for kind in kinds}
        return TwoTowerTrainTask(model.train(), docs, model.id_rows(ids), targets, cfg, 2, "cpu", text_pairs=text)

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


def test_passes_with_gradients_use_plain_attention_on_a_cpu_and_compute_the_same(task):
    t = task()
    encoder = t.model.item_tower.encoder.eval()
    ids, mask = t.documents.batch(torch.arange(4), "cpu")
    with torch.no_grad():
        fused = t.model.item_tower.pool(ids, mask)
        with eager_attention_on_cpu(encoder, torch.device("cpu")):
            assert encoder.config._attn_implementation == "eager"
            plain = t.model.item_tower.pool(ids, mask)
    assert encoder.config._attn_implementation == "sdpa"
    torch.testing.assert_close(plain, fused, rtol=1e-4, atol=1e-5)
    with eager_attention_on_cpu(encoder, torch.device("meta")):  # any other device: untouched
        assert encoder.config._attn_implementation == "sdpa"
    # What the transformer ran with: plain attention in a fine-tuning step, SDPA when re-encoding.
    seen = []
    encoder.register_forward_pre_hook(lambda module, _: seen.append(module.config._attn_implementation))
    t(Batch(**BATCH, encoded=2))
    assert seen and set(seen) == {"eager"}
    seen.clear()
    t.refresh()
    assert seen and set(seen) == {"sdpa"}


def test_id_dropout_hides_ids_from_the_loss(task):
    t = task(id_dropout=1.0)
    t(Batch(**BATCH, encoded=0)).total.backward()
    grad = t.model.item_tower.id_embedding.weight.grad.to_dense()  # a sparse gradient
    assert grad[1:].abs().sum() == 0  # every item's ID row hidden: only the text places items
    t = task(id_dropout=0.0)
    t(Batch(**BATCH, encoded=0)).total.backward()
    assert t.model.item_tower.id_embedding.weight.grad.to_dense()[1:3].abs().sum() > 0


def test_the_content_loss_ranks_text_only_items_for_the_mean_of_a_history(task):
    t = task(content_loss_weight=0.5, id_dropout=0.0)
    with torch.no_grad():
        t.model.user_tower.projection.weight.zero_()  # the user tower says nothing: the item tower learns nothing
    projection = t.model.item_tower.projection.weight

    def step(weight):
        t.cfg = dataclasses.replace(t.cfg, content_loss_weight=weight)
        t.model.zero_grad()
        torch.manual_seed(0)  # the same dropout in the user tower's layer
        out = t(Batch(**BATCH, encoded=0))
        out.loss.backward()
        return out.loss.item(), projection.grad.abs().sum().item()

    (without, no_gradient), (with_content, gradient) = step(0.0), step(0.5)
    assert with_content > without  # a second softmax on top of the same one
    assert no_gradient == 0 and gradient > 0  # the content term alone trains the item tower here


PAIRS = pd.DataFrame(
    {"query": ["apple", "apple", "ocean", "ocean", "ocean"], "item_id": ["0", "1", "2", "new", "gone"]}
)


def test_search_pairs_are_grouped_by_query_and_drawn_query_first():
    pairs = SearchPairs.from_frame(PAIRS, pd.Index(["0", "1", "2", "new"]), _Whitespace(), 4)
    assert len(pairs) == 4 and pairs.counts.tolist() == [2, 2]  # "gone" is not in the catalogue
    query, items = pairs.sample(400, torch.Generator().manual_seed(0))
    assert set(zip(query.tolist(), items.tolist())) == {(0, 0), (0, 1), (1, 2), (1, 3)}
    assert 150 < int((query == 0).sum()) < 250  # each query about as often, whatever its item count
    assert SearchPairs.from_frame(PAIRS.iloc[4:], pd.Index(["0"]), _Whitespace(), 4) is None


def test_text_losses_train_the_text_path_and_the_transformer_only_while_fine_tuning(task):
    t = task(pairs=PAIRS, kinds=("search", "interests"), search_batch_size=4, search_loss_weight=0.5,
             interests_loss_weight=0.25)  # fmt: skip
    out = t(Batch(**BATCH, encoded=0))
    assert set(out.text_losses) == {"search", "interests"}
    assert all(torch.isfinite(v) for v in out.text_losses.values())
    assert out.total.item() == pytest.approx(out.loss.item() + sum(v.item() for v in out.text_losses.values()))
    out.total.backward()
    assert all(g is None for g in encoder_grads(t.model))
    assert t.model.item_tower.text_bias.weight.grad.abs().sum() > 0  # interests are scored with the bias
    t.model.zero_grad()
    t(Batch(**BATCH, encoded=2)).text_losses["search"].backward()
    assert any(g is not None and g.abs().sum() > 0 for g in encoder_grads(t.model))
    assert task(pairs=PAIRS, search_loss_weight=0.0)(Batch(**BATCH, encoded=0)).text_losses is None


def test_the_search_loss_learns_which_items_a_query_describes(task):
    t = task(pairs=PAIRS, search_batch_size=8, search_loss_weight=1.0, id_dropout=0.0)
    tables = {id(t.model.item_tower.id_embedding.weight), id(t.model.item_tower.id_bias.weight)}
    optimizers = [
        torch.optim.Adam([p for p in t.model.parameters() if id(p) not in tables], lr=1e-2),
        torch.optim.SparseAdam([p for p in t.model.parameters() if id(p) in tables], lr=1e-2),  # sparse gradients
    ]
    losses = []
    for _ in range(60):
        out = t(Batch(**BATCH, encoded=0))
        for optimizer in optimizers:
            optimizer.zero_grad()
        out.text_losses["search"].backward()
        for optimizer in optimizers:
            optimizer.step()
        losses.append(out.text_losses["search"].item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


class _Whitespace:
    """A stand-in tokenizer for pair bookkeeping: one id per word."""

    def __call__(self, texts, max_length, **_):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids[i, : len(text.split())] = 1
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}

"""The two-tower model on a tiny random encoder: towers, loss by hand, checkpoints."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from recsys_lib.models.two_tower import (
    NO_ID,
    PAD,
    TokenizedDocuments,
    TwoTowerModel,
    embed_documents,
    embed_users,
    history_matrix,
    mean_pool,
    sampled_softmax_loss,
)

TEXTS = ["Toy Story. Animation, Comedy", "Heat. Crime, Thriller", "Alien. Horror, Sci-Fi", "Up"]


@pytest.fixture
def model(tiny_encoder):
    model, tokenizer = TwoTowerModel.from_encoder(
        str(tiny_encoder), history_length=3, max_length=16, temperature=0.05, id_vocab=pd.Index(["a", "b"])
    )
    return model.eval(), tokenizer


def test_item_tower_starts_as_the_pretrained_sentence_encoder(model):
    model, tokenizer = model
    docs = TokenizedDocuments.from_texts(tokenizer, TEXTS, 16)
    vectors, bias = embed_documents(model, docs, batch_size=2, device="cpu")
    assert vectors.shape == (4, 32) and bias.shape == (4,)
    assert torch.equal(bias, torch.zeros(4))  # biases start at zero
    assert torch.allclose(vectors.norm(dim=1), torch.ones(4), atol=1e-5)
    ids, mask = docs.batch(torch.arange(4), "cpu")
    with torch.no_grad():
        hidden = model.item_tower.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = F.normalize(mean_pool(hidden, mask), dim=-1)
    assert torch.allclose(vectors, expected, atol=1e-5)


def test_batches_are_trimmed_to_their_longest_document(model):
    _, tokenizer = model
    docs = TokenizedDocuments.from_texts(tokenizer, TEXTS, 16)
    ids, mask = docs.batch(torch.tensor([3]), "cpu")  # "Up" -> [CLS] up [SEP]
    assert ids.shape == (1, 3) and mask.sum() == 3


def test_user_tower_starts_as_the_mean_of_the_history(model):
    model, _ = model
    items = F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    history = history_matrix([np.array([0, 1]), np.array([4]), np.array([], dtype=np.int64)], 3)
    assert history.tolist() == [[PAD, 0, 1], [PAD, PAD, 4], [PAD, PAD, PAD]]
    users = embed_users(model, items, history)
    assert torch.allclose(users[0], F.normalize(items[0] + items[1], dim=0), atol=1e-5)
    assert torch.allclose(users[1], items[4], atol=1e-5)
    assert torch.equal(users[2], torch.zeros(32))  # no history: no vector (popularity fallback)


def test_history_matrix_keeps_the_most_recent_items():
    assert history_matrix([np.array([1, 2, 3, 4, 5])], 3).tolist() == [[3, 4, 5]]


def _loss(users, items, ids, temperature, log_q=None, bias=None):
    ids = torch.as_tensor(ids)
    return sampled_softmax_loss(users, items, ids[: len(users)], ids, temperature, log_q, bias)


def test_loss_by_hand():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = _loss(users, items, [0, 1], temperature=1.0)
    # Each row: logits [1, 0] with the positive first: -log(e / (e + 1)).
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)))


def test_loss_with_extra_negatives_and_item_bias():
    users = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # positive, then two sampled negatives
    bias = torch.tensor([0.5, -1.0, 2.0])
    logits = torch.tensor([1.0 / 0.5 + 0.5, 0.0 - 1.0, 0.6 / 0.5 + 2.0])
    expected = -torch.log_softmax(logits, 0)[0]
    assert _loss(users, items, [3, 4, 5], 0.5, bias=bias).item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_masks_the_same_item_elsewhere_in_the_batch():
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # Both rows have item 7 as their positive, and 7 was also drawn as an extra negative:
    # none of them is a negative for either row.
    loss = _loss(users, items, [7, 7, 7], temperature=0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_logq_correction_subtracts_log_popularity():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    log_q = torch.log(torch.tensor([0.5, 0.5]))
    # Equal sampling probabilities shift every logit equally: the loss does not change.
    plain = _loss(users, items, [0, 1], 1.0)
    assert _loss(users, items, [0, 1], 1.0, log_q).item() == pytest.approx(plain.item())
    # A popular negative is discounted: row 0's negative (item 1) has q = 0.9 -> loss falls.
    skewed = torch.log(torch.tensor([0.1, 0.9]))
    row0 = -torch.log_softmax(torch.tensor([1.0 - skewed[0], 0.0 - skewed[1]]), 0)[0]
    row1 = -torch.log_softmax(torch.tensor([0.0 - skewed[0], 1.0 - skewed[1]]), 0)[1]
    expected = (row0 + row1) / 2
    assert _loss(users, items, [0, 1], 1.0, skewed).item() == pytest.approx(expected.item())


def test_cold_items_are_placed_by_text_and_warm_items_by_text_plus_id(model):
    model, tokenizer = model
    docs = TokenizedDocuments.from_texts(tokenizer, TEXTS[:3], 16)
    rows = model.id_rows(["a", "new", "b"])
    assert rows.tolist() == [1, NO_ID, 2]
    with torch.no_grad():
        model.item_tower.id_embedding.weight[1] = 0.3
        model.item_tower.id_bias.weight[2] = 1.5
    text, text_bias = embed_documents(model, docs, 4, "cpu")
    vectors, bias = embed_documents(model, docs, 4, "cpu", rows)
    assert torch.allclose(vectors[1], text[1]) and bias[1] == text_bias[1]  # cold: text only
    assert not torch.allclose(vectors[0], text[0])  # warm: moved by its ID embedding
    assert torch.allclose(vectors[0], F.normalize(text[0] + 0.3, dim=0), atol=1e-6)
    assert bias[2] == pytest.approx(text_bias[2].item() + 1.5)


def test_with_id_vocab_keeps_the_rows_of_shared_items(model):
    model, _ = model
    with torch.no_grad():
        model.item_tower.id_embedding.weight[2] = 0.7  # item "b"
        model.item_tower.id_bias.weight[2] = -0.4
    grown = model.with_id_vocab(pd.Index(["b", "c"]))
    assert grown.id_rows(["b", "c", "a"]).tolist() == [1, 2, NO_ID]
    assert torch.allclose(grown.item_tower.id_embedding.weight[1], torch.full((32,), 0.7))
    assert grown.item_tower.id_bias.weight[1].item() == pytest.approx(-0.4)
    assert torch.equal(grown.item_tower.id_embedding.weight[2], torch.zeros(32))  # new item starts at 0


def test_checkpoint_roundtrip(model, tmp_path):
    model, tokenizer = model
    with torch.no_grad():
        model.user_tower.query.add_(0.5)
        model.item_tower.projection.weight.mul_(2.0)
        model.item_tower.id_embedding.weight[1] = 0.2
        model.item_tower.id_bias.weight[2] = 0.9
    model.save(tmp_path / "ckpt", tokenizer)
    loaded, tok2 = TwoTowerModel.load(tmp_path / "ckpt")
    docs = TokenizedDocuments.from_texts(tok2, TEXTS, 16)
    rows = model.id_rows(["a", "b", "x", "y"])
    for before, after in zip(
        embed_documents(model, docs, 4, "cpu", rows), embed_documents(loaded, docs, 4, "cpu", rows)
    ):
        assert torch.allclose(before, after, atol=1e-6)
    assert loaded.config == model.config
    assert loaded.encoder_fingerprint() == model.encoder_fingerprint()  # cached outputs stay valid
    assert list(loaded.id_vocab) == ["a", "b"]
    assert (tmp_path / "ckpt" / "encoder" / "model.safetensors").exists()


def test_freeze_encoder_layers(model):
    model, _ = model
    model.freeze_encoder_layers(1)
    trainable = {n for n, p in model.item_tower.encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.1.") for n in trainable)
    model.freeze_encoder_layers(0)
    assert not model.encoder_parameters()
    assert model.head_parameters()  # projections, ID tables, user tower and temperature still learn


def test_user_tower_layers_read_the_order_of_the_history(model):
    model, _ = model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.user_tower.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    items = F.normalize(torch.randn(3, 32, generator=g), dim=-1)
    forward, backward = history_matrix([np.array([0, 1, 2]), np.array([2, 1, 0])], 3)[:, None]
    users = embed_users(model, items, np.vstack([forward, backward]))
    assert users.shape == (2, 32)
    assert not torch.allclose(users[0], users[1], atol=1e-4)  # recency-aware, not a bag of items


@pytest.mark.parametrize("layers", [0, 1])
def test_user_tower_reads_rows_of_a_table_as_it_reads_the_vectors(layers):
    """The table path (one embedding_bag, no [B, L, d] tensor) is the same function, gradients
    included, as the history's vectors gathered and read."""
    from recsys_lib.models.two_tower import UserTower

    torch.manual_seed(0)
    tower = UserTower(dim=8, history_length=4, layers=layers, heads=2).eval()
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    table = torch.randn(6, 8)
    rows = torch.tensor([[PAD, 0, 5, 0], [PAD, PAD, PAD, 3], [PAD, PAD, PAD, PAD], [1, 2, 3, 4]])
    mask = rows != PAD
    outputs, grads = [], []
    for by_rows in (True, False):
        tower.zero_grad()
        t = table.clone().requires_grad_()
        if by_rows:
            users = tower.forward_rows(t, rows.clamp(min=0), mask)
        else:
            users = tower(t[rows.clamp(min=0)] * mask.unsqueeze(-1), mask)
        (users * torch.arange(8.0)).sum().backward()
        outputs.append(users.detach())
        grads.append([t.grad] + [p.grad.clone() for p in tower.parameters() if p.grad is not None])
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert torch.equal(outputs[0][2], torch.zeros(8))  # no history: zeros
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_weighted_loss_is_the_weighted_mean_of_the_rows():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    ids = torch.tensor([0, 1])
    rows = [sampled_softmax_loss(users[[r]], items[[r, 1 - r]], ids[[r]], ids[[r, 1 - r]], 1.0).item() for r in (0, 1)]
    weighted = sampled_softmax_loss(users, items, ids, ids, 1.0, weights=torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx((3 * rows[0] + rows[1]) / 4, rel=1e-6)


def test_an_encoder_that_cannot_be_loaded_is_a_settings_error(tmp_path):
    from recsys_lib.errors import SettingsError
    from recsys_lib.models.encoder import load_encoder

    with pytest.raises(SettingsError, match="model.encoder is empty"):
        load_encoder(" ")
    with pytest.raises(SettingsError, match=r"^model.encoder: no such folder .*not-a-model \(a local path"):
        load_encoder(str(tmp_path / "not-a-model"))  # a path, not a hub name: never asks the hub
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(SettingsError, match="cannot load a tokenizer and model"):
        load_encoder(str(tmp_path / "not-a-model"))  # an empty folder

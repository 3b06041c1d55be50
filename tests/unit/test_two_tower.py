import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys_lib.models.two_tower import (
    PAD,
    TokenizedDocuments,
    TwoTowerModel,
    embed_documents,
    embed_users,
    history_matrix,
    in_batch_softmax_loss,
    mean_pool,
)

TEXTS = ["Toy Story. Animation, Comedy", "Heat. Crime, Thriller", "Alien. Horror, Sci-Fi", "Up"]


@pytest.fixture
def model(tiny_encoder):
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), history_length=3, max_length=16, temperature=0.05)
    return model.eval(), tokenizer


def test_item_tower_starts_as_the_pretrained_sentence_encoder(model):
    model, tokenizer = model
    docs = TokenizedDocuments.from_texts(tokenizer, TEXTS, 16)
    vectors = embed_documents(model, docs, batch_size=2, device="cpu")
    assert vectors.shape == (4, 32)
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


def test_loss_by_hand():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = in_batch_softmax_loss(users, items, torch.tensor([0, 1]), temperature=1.0)
    # Each row: logits [1, 0] with the positive first: -log(e / (e + 1)).
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)))


def test_loss_masks_the_same_item_elsewhere_in_the_batch():
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Both rows have item 7 as their positive: neither is the other's negative.
    loss = in_batch_softmax_loss(users, items, torch.tensor([7, 7]), temperature=0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_logq_correction_subtracts_log_popularity():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    log_q = torch.log(torch.tensor([0.5, 0.5]))
    # Equal sampling probabilities shift every logit equally: the loss does not change.
    plain = in_batch_softmax_loss(users, items, torch.tensor([0, 1]), 1.0)
    assert in_batch_softmax_loss(users, items, torch.tensor([0, 1]), 1.0, log_q).item() == pytest.approx(plain.item())
    # A popular negative is discounted: row 0's negative (item 1) has q = 0.9 -> loss falls.
    skewed = torch.log(torch.tensor([0.1, 0.9]))
    row0 = -torch.log_softmax(torch.tensor([1.0 - skewed[0], 0.0 - skewed[1]]), 0)[0]
    row1 = -torch.log_softmax(torch.tensor([0.0 - skewed[0], 1.0 - skewed[1]]), 0)[1]
    expected = (row0 + row1) / 2
    assert in_batch_softmax_loss(users, items, torch.tensor([0, 1]), 1.0, skewed).item() == pytest.approx(
        expected.item()
    )


def test_checkpoint_roundtrip(model, tmp_path):
    model, tokenizer = model
    with torch.no_grad():
        model.user_tower.query.add_(0.5)
        model.item_tower.projection.weight.mul_(2.0)
    model.save(tmp_path / "ckpt", tokenizer)
    loaded, tok2 = TwoTowerModel.load(tmp_path / "ckpt")
    docs = TokenizedDocuments.from_texts(tok2, TEXTS, 16)
    assert torch.allclose(embed_documents(model, docs, 4, "cpu"), embed_documents(loaded, docs, 4, "cpu"), atol=1e-6)
    assert loaded.config == model.config
    assert (tmp_path / "ckpt" / "encoder" / "model.safetensors").exists()


def test_freeze_encoder_layers(model):
    model, _ = model
    model.freeze_encoder_layers(1)
    trainable = {n for n, p in model.item_tower.encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.1.") for n in trainable)
    model.freeze_encoder_layers(0)
    assert not model.encoder_parameters()
    assert model.head_parameters()  # projections, user tower and temperature still learn

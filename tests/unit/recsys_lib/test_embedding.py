"""Bulk embedding through the encoder-output cache (cached == fully re-encoded), and the item
vectors later stages read."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_lib.embedding import (
    CachedTexts,
    EncoderOutputs,
    ItemVectors,
    catalogue_indices,
    embed_catalogue,
    embeddings_table,
)
from recsys_lib.models.two_tower import TwoTowerModel


def documents(texts):
    import hashlib

    return pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(len(texts))],
            "document": texts,
            "content_hash": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
        }
    )


def test_cached_encoder_outputs_equal_a_full_reencoding(tiny_encoder):
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05, id_vocab=pd.Index(["i0"]))
    with torch.no_grad():
        model.item_tower.id_embedding.weight[1] = 0.5  # i0 is warm: its ID moves it
    before = documents(["alpha one", "beta two", "gamma three"])
    _, outputs = embed_catalogue(model, tokenizer, before, 2, "cpu")
    assert len(outputs) == 3
    # Next night: item 1 was edited and a new item arrived; only those two texts are encoded.
    after = documents(["alpha one", "beta two, revised", "gamma three", "delta four"])
    cached, computed = embed_catalogue(model, tokenizer, after, 2, "cpu", outputs)
    assert sorted(computed.hashes) == sorted(after["content_hash"][[1, 3]])
    full, _ = embed_catalogue(model, tokenizer, after, 2, "cpu")
    np.testing.assert_allclose(cached.vectors, full.vectors, atol=1e-6)
    np.testing.assert_allclose(cached.bias, full.bias, atol=1e-6)
    assert list(cached.ids) == ["i0", "i1", "i2", "i3"]
    assert not np.allclose(cached.vectors[0], full.vectors[2])  # sanity: vectors differ per item


def test_outputs_are_shared_by_models_with_one_encoder_and_only_by_them(tiny_encoder):
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05)
    grown = model.with_id_vocab(pd.Index(["i0"]))  # the served continuation: same transformer
    assert grown.encoder_fingerprint() == model.encoder_fingerprint()
    other, _ = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 12, 0.05)  # another token budget
    assert other.encoder_fingerprint() != model.encoder_fingerprint()
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        next(tuned.item_tower.encoder.parameters()).add_(1e-3)  # fine-tuned a little: new outputs
    assert tuned.encoder_fingerprint() != model.encoder_fingerprint()


def test_users_words_go_through_the_transformer_once_per_encoder(settings, tiny_encoder):
    """Words users say they like are cached like documents: a second stage (or night) with the
    same encoder reads them back, equal to a fresh fp32 pass within bf16's precision (the
    runtime ``auto`` picks where the CPU has it); another encoder does not share them."""
    from recsys_lib.retrieval import Retriever
    from recsys_lib.storage import Storage

    storage = Storage(settings)
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05)
    texts = ["space operas, heist films", "jazz", "space operas, heist films"]
    words = CachedTexts(storage, model, tokenizer, settings.embed, torch.device("cpu"))
    first = words(texts)
    assert len(storage.read_encoder_outputs(words.key)) == 2  # one row per distinct text
    plain, cached = Retriever(model, None, None, tokenizer=tokenizer), Retriever(model, None, None, pooled=words)
    np.testing.assert_allclose(cached.words_vectors(texts), plain.words_vectors(texts), atol=1e-2)  # bf16 or fp32

    later = CachedTexts(storage, model, tokenizer, settings.embed, torch.device("cpu"))  # tomorrow's stage
    later.pool = lambda batch: pytest.fail(f"encoded again: {batch}")  # nothing but the cache may answer
    np.testing.assert_array_equal(later(texts[:2]), first[:2])
    assert len(later(["jazz", "space operas, heist films"])) == 2

    tuned = copy.deepcopy(model)
    with torch.no_grad():
        next(tuned.item_tower.encoder.parameters()).add_(1e-3)
    assert CachedTexts(storage, tuned, tokenizer, settings.embed, torch.device("cpu")).key != words.key


def test_a_text_that_repeats_goes_through_the_transformer_once(tiny_encoder):
    from recsys_lib.embedding import pooled_outputs
    from recsys_lib.models.two_tower import TokenizedDocuments, embed_text

    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05)
    encoded = []

    def pool(texts):  # the fp32 path, recording what it is given
        encoded.extend(texts)
        docs = TokenizedDocuments.from_texts(tokenizer, texts, model.config.max_length)
        return embed_text(model, docs, 8, torch.device("cpu"), pooled=True).numpy()

    frame = documents(["jazz", "drama", "jazz", "jazz"])
    pooled, computed = pooled_outputs(model, tokenizer, frame, 8, torch.device("cpu"), None, pool)
    assert encoded == ["jazz", "drama"] and len(computed) == 2
    np.testing.assert_array_equal(pooled[0], pooled[3])
    np.testing.assert_allclose(pooled, pool(frame["document"].tolist()), atol=1e-6)


def test_encoder_outputs_roundtrip_through_a_table():
    outputs = EncoderOutputs(pd.Index(["h1", "h2", "h1"], dtype=object), np.arange(6, dtype=np.float32).reshape(3, 2))
    again = EncoderOutputs.from_table(outputs.to_table())
    assert list(again.hashes) == ["h1", "h2"] and again.pooled.tolist() == [[0, 1], [2, 3]]  # first row per hash
    assert again.rows(["h2", "zz"]).tolist() == [1, -1]


def test_item_vectors_from_the_embeddings_table():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    table = embeddings_table(["b", "a", "c"], vectors, np.array([0.5, -1.0, 0.0]), ["h1", "h2", "h3"], "7")
    items = ItemVectors.from_table(table)
    assert list(items.ids) == ["b", "a", "c"] and len(items) == 3  # the table's row order
    np.testing.assert_array_equal(items.vectors, vectors)
    assert items.bias.tolist() == [0.5, -1.0, 0.0]
    assert [i.tolist() for i in items.indices([["a", "zz", "c"], [], ["b"]])] == [[1, 2], [], [0]]
    assert list(items.subset(np.array([2, 0])).ids) == ["c", "b"]


def test_catalogue_indices_of_no_lists():
    assert catalogue_indices(pd.Index(["a"]), []) == []
    assert [i.tolist() for i in catalogue_indices(pd.Index(["a"]), [[], []])] == [[], []]

"""Bulk embedding with reuse (incremental == full), and the item vectors later stages read."""

import numpy as np
import pandas as pd

from recsys_lib.embedding import ItemVectors, catalogue_indices, embed_catalogue, embeddings_table, vectors_of
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


def test_incremental_embedding_equals_full_reembedding(tiny_encoder):
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05)
    before = documents(["alpha one", "beta two", "gamma three"])
    first, counts = embed_catalogue(model, tokenizer, before, "7", 2, "cpu")
    assert counts == {"embedded": 3, "reused": 0}
    # Next night: item 1 was edited and a new item arrived.
    after = documents(["alpha one", "beta two, revised", "gamma three", "delta four"])
    incremental, counts = embed_catalogue(model, tokenizer, after, "7", 2, "cpu", previous=first.to_pandas())
    assert counts == {"embedded": 2, "reused": 2}
    full, _ = embed_catalogue(model, tokenizer, after, "7", 2, "cpu")
    assert np.allclose(vectors_of(incremental), vectors_of(full), atol=1e-6)
    assert incremental.column("item_id").to_pylist() == ["i0", "i1", "i2", "i3"]


def test_vectors_of_another_model_version_are_not_reused(tiny_encoder):
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05)
    docs = documents(["alpha one"])
    old, _ = embed_catalogue(model, tokenizer, docs, "1", 2, "cpu")
    _, counts = embed_catalogue(model, tokenizer, docs, "2", 2, "cpu", previous=old.to_pandas())
    assert counts == {"embedded": 1, "reused": 0}


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

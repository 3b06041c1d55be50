"""The encoder's runtimes for bulk embedding: ONNX Runtime fp32 gives torch's pooled outputs,
int8 and bf16 close ones, exports are reused per encoder fingerprint, and the embed path keeps
the int8 outputs apart in its cache."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from recsys_lib.embedding import embed_version
from recsys_lib.models.inference import QueryEncoder, cache_key, export_query_encoder, onnx_pooler, resolve_runtime
from recsys_lib.models.two_tower import TokenizedDocuments, TwoTowerModel, embed_text
from recsys_lib.schema import CONTENT_HASH_COL
from recsys_lib.storage import FeatureTable, Storage
from tests.unit.recsys_lib.test_embedding import documents

TEXTS = ["a", "Toy Story (1995) Adventure|Animation|Children", "Heat", "the quick brown fox jumps over it",
         "Jumanji (1995)", "x y", "a much longer document about a film with many words, to fill 16 tokens"]  # fmt: skip


def unit(m):
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_onnx_pooled_outputs_match_torch_and_int8_stays_close(tiny_encoder, tmp_path):
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05)
    docs = TokenizedDocuments.from_texts(tokenizer, TEXTS, 16)
    reference = embed_text(model, docs, 3, "cpu", pooled=True).numpy()  # batches of 3: every length mix
    fp32 = onnx_pooler(model, "onnx", tmp_path).pool(docs, 3)
    np.testing.assert_allclose(fp32, reference, atol=1e-5)
    int8 = onnx_pooler(model, "onnx-int8", tmp_path).pool(docs, 3)
    assert np.all(np.sum(unit(int8) * unit(reference), axis=1) > 0.95)
    assert not np.allclose(int8, reference, atol=1e-5)  # quantised for real
    exported = sorted(p.name for p in (tmp_path / model.encoder_fingerprint()).iterdir())
    assert exported == ["pooler-int8.onnx", "pooler.onnx"]
    tuned = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05)[0]
    with torch.no_grad():
        next(tuned.item_tower.encoder.parameters()).add_(1e-2)
    onnx_pooler(tuned, "onnx", tmp_path)  # a fine-tuned encoder is a graph of its own
    assert len(list(tmp_path.iterdir())) == 2


def test_embedding_on_onnx_runtimes_caches_int8_outputs_apart(tiny_encoder, settings):
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05, id_vocab=pd.Index(["i0"]))
    storage = Storage(settings)
    table = pa.Table.from_pandas(documents(TEXTS), preserve_index=False)
    storage.work.write_table(Storage.features(FeatureTable.ITEM_DOCUMENTS, "2026-01-01"), table)
    vectors = {}
    for runtime, encoded in (("torch", 7), ("onnx", 0), ("torch-bf16", 0), ("onnx-int8", 7)):
        cfg = settings.with_overrides({"embed.runtime": runtime}).embed
        vectors[runtime], summary = embed_version(storage, "2026-01-01", model, tokenizer, "m/1", cfg, "cpu", False)
        assert (summary["runtime"], summary["encoded"]) == (runtime, encoded)  # 0: all from the cache
    np.testing.assert_allclose(vectors["onnx"].vectors, vectors["torch"].vectors, atol=1e-6)
    fingerprint = model.encoder_fingerprint()
    int8 = storage.read_encoder_outputs(cache_key(fingerprint, "onnx-int8"))
    assert set(int8.hashes) == set(documents(TEXTS)[CONTENT_HASH_COL])
    assert np.all(np.sum(vectors["onnx-int8"].vectors * vectors["torch"].vectors, axis=1) > 0.95)


def test_bf16_on_cpu_stays_close_and_auto_takes_it_only_where_the_cpu_has_it(tiny_encoder, monkeypatch):
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05)
    docs = TokenizedDocuments.from_texts(tokenizer, TEXTS, 16)
    fp32 = embed_text(model, docs, 3, "cpu", pooled=True).numpy()
    bf16 = embed_text(model, docs, 3, "cpu", pooled=True, cpu_bf16=True).numpy()
    assert np.all(np.sum(unit(bf16) * unit(fp32), axis=1) > 0.99) and not np.array_equal(bf16, fp32)
    from recsys_lib.models import inference

    for has_bf16, expected in ((True, "torch-bf16"), (False, "torch")):  # a CPU feature: patched
        monkeypatch.setattr(inference, "cpu_runs_bf16", lambda has=has_bf16: has)
        assert resolve_runtime("auto", "cpu") == expected
    assert resolve_runtime("onnx-int8", "cuda") == "torch"  # a GPU embeds with torch (bf16 autocast)


def test_the_exported_query_encoder_gives_the_models_text_vectors(tiny_encoder, tmp_path):
    model, tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder), 3, 16, 0.05)
    files = export_query_encoder(model, tokenizer, tmp_path / "query")
    assert {"query.onnx", "query_encoder.json", "tokenizer.json"} <= set(files)
    assert QueryEncoder(tmp_path / "query").config["temperature"] == pytest.approx(0.05)  # scores: cosine / T + bias
    queries = ["", "heat", "space adventure with robots", TEXTS[-1] * 3]  # empty, short, long (truncated)
    vectors = QueryEncoder(tmp_path / "query").encode(queries)
    expected = embed_text(model, TokenizedDocuments.from_texts(tokenizer, queries, 16), 8, "cpu").numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

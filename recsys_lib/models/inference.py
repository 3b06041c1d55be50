"""How the item tower's transformer runs for bulk embedding (``embed.runtime``).

- ``torch``: fp32, the reference.
- ``torch-bf16``: torch with bf16 autocast on CPU. On CPUs with AMX or AVX512-BF16 (oneDNN
  uses them) it is several times faster than fp32 with vectors at cosine 0.99999; on other CPUs
  bf16 is emulated and slower, so ``auto`` takes it only where the CPU has it.
- ``onnx``: the same graph in ONNX Runtime, fp32 (the same vectors to about 1e-6): portable.
- ``onnx-int8``: ONNX Runtime, dynamically quantised: int8 weights per output channel, int8
  activations per batch, except each layer's FFN output projection, whose input (after GELU)
  carries the few very large activations BERT-style encoders are known for, which one int8
  scale per batch cannot represent (on MiniLM: top-10 overlap with fp32 0.85 -> 0.88).
- ``auto`` (default): ``torch-bf16`` where the CPU runs bf16 natively, else ``torch``.
On a GPU embedding always runs torch with bf16 autocast. Training runs torch, with bf16 autocast
on a GPU and, by ``train.cpu_precision``, on CPUs that run bf16 natively.
The README's benchmark (``python -m bench.encoder``) has each runtime's speed and quality.

ONNX exports are cached per encoder fingerprint in a local folder, since every fine-tuned
encoder is a new graph; the first embed of a model version pays a few seconds to export.
Tests: tests/unit/recsys_lib/models/test_inference.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys_lib.logs import Progress
from recsys_lib.schema import QUERY_CONFIG, QUERY_GRAPH

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "torch-bf16", "onnx", "onnx-int8")
ONNX_RUNTIMES = ("onnx", "onnx-int8")


def cpu_runs_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX tiles or AVX512-BF16) that oneDNN uses."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # the probes are private: an older or newer torch may lack them
        return False


def cpu_bf16(precision: str, device) -> bool:
    """Whether torch should autocast to bf16 on this CPU for ``train.cpu_precision`` (auto: where
    the CPU runs bf16 natively). On CUDA torch autocasts to bf16 regardless."""
    if str(torch.device(device).type) != "cpu":
        return False
    return precision == "bf16" or (precision == "auto" and cpu_runs_bf16())


def resolve_runtime(setting: str, device) -> str:
    """The runtime that embeds on ``device`` for the ``embed.runtime`` setting."""
    if str(device) != "cpu":
        return "torch"  # with bf16 autocast on CUDA
    if setting == "auto":
        return "torch-bf16" if cpu_runs_bf16() else "torch"
    if setting not in RUNTIMES:
        raise ValueError(f"embed.runtime: {setting!r} is not one of auto, {', '.join(RUNTIMES)}")
    return setting


class _TowerPath(nn.Module):
    """One path of the item tower as a module to export: ``pool`` (transformer + mean pooling)
    or ``text`` (pool, project, normalise: a query's vector)."""

    def __init__(self, item_tower: nn.Module, path: str):
        super().__init__()
        self.item_tower, self.path = item_tower, path

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return getattr(self.item_tower, self.path)(input_ids, attention_mask)


def export_pooler(model, path: Path) -> Path:
    """Write the model's transformer + mean pooling as an ONNX graph (fp32)."""
    return _export(_TowerPath(model.item_tower, "pool"), path, "pooled")


def export_query_encoder(model, tokenizer, folder: Path) -> dict[str, bytes]:
    """The query side of the model for services: ``query.onnx`` (token ids and mask -> unit
    vector, the text path every item takes, so a query lands beside the items it describes),
    the tokenizer's files, and ``query_encoder.json`` (max_length, dimension, and the model's
    learned temperature: scores are cosine / T + item bias). Returns name -> bytes of every file
    written to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _export(_TowerPath(model.item_tower, "text"), folder / QUERY_GRAPH, "vector")
    tokenizer.save_pretrained(folder)
    config = {"format": 1, "max_length": model.config.max_length, "dim": model.config.dim,
              "inputs": ["input_ids", "attention_mask"], "output": "vector", "normalised": True,
              "temperature": float(model.temperature.item())}  # fmt: skip
    (folder / QUERY_CONFIG).write_text(json.dumps(config, indent=2))
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _export(module: nn.Module, path: Path, output: str) -> Path:
    """Export ``module(input_ids, attention_mask)`` as an ONNX graph with dynamic batch and
    sequence axes. torch's dynamo exporter: the TorchScript one bakes transformers 5's
    attention-mask shapes into the graph."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    ids = torch.tensor([[101, 7592, 102, 0], [101, 7592, 2088, 102]])
    mask = (ids != 0).long()
    batch, seq = torch.export.Dim("batch", min=1, max=1 << 20), torch.export.Dim("seq", min=2, max=4096)
    # The exporter prints its progress and notes; the stage's log has its own line for this.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (ids, mask),
            input_names=["input_ids", "attention_mask"],
            output_names=[output],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    exporter_log.setLevel(level)
    tmp = path.with_suffix(".tmp")
    program.save(str(tmp))
    os.replace(tmp, path)
    return path


def quantize_int8(fp32_path: Path, int8_path: Path, ffn_out_shape: tuple[int, int]) -> Path:
    """Dynamic int8 quantisation of every weight MatMul except the FFN output projections (the
    MatMuls whose weight is ``ffn_out_shape``: intermediate size x hidden size)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    ffn_out = [n.name for n in graph.node if n.op_type == "MatMul" and shapes.get(n.input[1]) == tuple(ffn_out_shape)]
    tmp = int8_path.with_suffix(".tmp")
    quantize_dynamic(
        str(fp32_path),
        str(tmp),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        nodes_to_exclude=ffn_out,
    )
    os.replace(tmp, int8_path)
    return int8_path


class OnnxPooler:
    """Pooled transformer outputs from an exported graph, in ONNX Runtime on CPU."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def pool(self, docs, batch_size: int) -> np.ndarray:
        """[n, d] float32 pooled outputs of ``TokenizedDocuments``, batches in length order."""
        order = torch.argsort(docs.lengths(), descending=True)
        out = None
        progress = Progress(log, "encode (ONNX Runtime)", len(docs), "documents")
        for start in range(0, len(docs), batch_size):
            index = order[start : start + batch_size]
            ids, mask = docs.batch(index, "cpu")
            feeds = {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
            pooled = self.session.run(None, feeds)[0]
            if out is None:
                out = np.empty((len(docs), pooled.shape[1]), dtype=np.float32)
            out[index.numpy()] = pooled
            progress.advance(len(index))
        return out if out is not None else np.zeros((0, 0), np.float32)


def onnx_pooler(model, runtime: str, cache_dir: str | Path) -> OnnxPooler:
    """An ``OnnxPooler`` for the model's encoder in ``runtime`` ('onnx' or 'onnx-int8'),
    exporting (and quantising) on first use per encoder fingerprint."""
    if runtime not in ONNX_RUNTIMES:
        raise ValueError(f"not an ONNX runtime: {runtime!r}; one of {', '.join(ONNX_RUNTIMES)}")
    folder = Path(cache_dir) / model.encoder_fingerprint()
    fp32 = folder / "pooler.onnx"
    if not fp32.exists():
        log.info("exporting the encoder to ONNX: %s", fp32)
        export_pooler(model, fp32)
    if runtime == "onnx":
        return OnnxPooler(fp32)
    int8 = folder / "pooler-int8.onnx"
    if not int8.exists():
        log.info("quantising the encoder to int8: %s", int8)
        config = model.item_tower.encoder.config
        quantize_int8(fp32, int8, (config.intermediate_size, config.hidden_size))
    return OnnxPooler(int8)


def cache_key(fingerprint: str, runtime: str) -> str:
    """The encoder-output cache key: int8 outputs are not the fp32 ones, so they are kept apart.
    ONNX fp32 outputs are the fp32 ones to within 1e-5; bf16 autocast ones (a GPU's, and a CPU's
    that runs bf16) to a cosine of 0.99997 (the bundled MiniLM over 400 sample titles: largest
    component difference 0.01 at a scale of 0.25, 99% of each title's 10 nearest the same). They
    share their cache, so a night reuses what any of them computed; an entry is what its first
    writer computed, and every later reader, on any host, reads that."""
    return f"{fingerprint}-int8" if runtime == "onnx-int8" else fingerprint


class QueryEncoder:
    """Text -> unit vectors from an exported query encoder folder (``export_query_encoder``):
    what a service needs to place a query in the items' space, without torch or the model."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.config = json.loads((folder / QUERY_CONFIG).read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.config["max_length"])
        self.tokenizer.enable_padding()
        self.session = OnnxPooler(folder / QUERY_GRAPH, threads).session

    def encode(self, texts: list[str]) -> np.ndarray:
        """[n, d] float32 unit vectors."""
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

"""The two-tower model, its loss and its checkpoint format.

Item tower: the pretrained transformer over an item's document, mean-pooled, then a linear map
that starts as the identity, so an untrained model is exactly the pretrained sentence encoder.
Warm items (seen in training) also have a learned ID embedding that is added to the text vector;
it starts at zero, and training drops it at random (ID dropout) so that the text alone must land
an item where its ID would: a brand-new item, known only by its text, is then recommendable.
Items may also carry a precomputed *side vector* (an image embedding, say): a gated projection
adds it to the text vector, per dimension (a gated multimodal unit, Arevalo et al., 2017); it
starts at zero, so the model starts as the text alone, and an item without one is its text.
User tower: a recency-aware transformer layer over the vectors of the user's latest items,
then attention pooling; it starts as the plain mean of the history (its residual branches and
the pooling query are zero-initialised).
Scores are cosine similarities; the loss is a sampled softmax over in-batch and uniformly drawn
negatives with a popularity (logQ) correction and a learned temperature.
Tests: tests/unit/recsys_lib/models/test_two_tower.py (a tiny random encoder).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from recsys_lib.logs import Progress
from recsys_lib.schema import ITEM_COL

log = logging.getLogger(__name__)

CONFIG_FILE = "two_tower.json"
TOWERS_FILE = "towers.safetensors"
ENCODER_DIR = "encoder"
ID_VOCAB_FILE = "id_vocab.parquet"
PAD = -1  # history slot without an item
NO_ID = 0  # ID-embedding row of items without one (cold items)


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int
    history_length: int
    max_length: int
    temperature: float
    base_encoder: str
    user_layers: int = 1
    user_heads: int = 4
    side_dim: int = 0  # width of the items' side vectors (0: none)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of token vectors where ``mask`` is 1. hidden [B, T, d], mask [B, T] -> [B, d]."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _identity_linear(dim: int) -> nn.Linear:
    layer = nn.Linear(dim, dim)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim))
        layer.bias.zero_()
    return layer


class ItemTower(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int, n_ids: int, side_dim: int = 0):
        super().__init__()
        self.encoder = encoder
        self.projection = _identity_linear(dim)
        self.side_dim = side_dim
        if side_dim:
            # What the side vector adds, and how much of it per dimension, given both: zero at
            # first (the text alone), and zero for an item without a side vector (all zeros).
            self.side_projection = nn.Linear(side_dim, dim, bias=False)
            nn.init.zeros_(self.side_projection.weight)
            self.side_gate = nn.Linear(dim + side_dim, dim)
            nn.init.zeros_(self.side_gate.weight)
            nn.init.zeros_(self.side_gate.bias)
        # Sparse gradients: a step touches a few thousand rows of tables that reach millions of
        # items (training.TwoTowerOptimizer updates only those rows).
        self.id_embedding = nn.Embedding(n_ids + 1, dim, sparse=True)
        nn.init.zeros_(self.id_embedding.weight)
        # Item bias (a logit offset: how likely the item is for anyone), from the text and,
        # for warm items, from the ID. Text alone must predict it for a brand-new item.
        self.text_bias = nn.Linear(dim, 1)
        nn.init.zeros_(self.text_bias.weight)
        nn.init.zeros_(self.text_bias.bias)
        self.id_bias = nn.Embedding(n_ids + 1, 1, sparse=True)
        nn.init.zeros_(self.id_bias.weight)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The transformer's mean-pooled output [B, d]: the costly part of the item tower."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def project(self, pooled: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """Unit content vectors [B, d] from pooled transformer outputs and, when the model takes
        them, the items' side vectors [B, side_dim] (rows of zeros or None: none)."""
        text = self.projection(pooled.float())
        if self.side_dim and side is not None:
            side = F.normalize(side.float(), dim=-1)  # any scale in; zeros stay zeros
            gate = torch.sigmoid(self.side_gate(torch.cat([F.normalize(text, dim=-1), side], dim=-1)))
            text = text + gate * self.side_projection(side)
        return F.normalize(text, dim=-1)

    def text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit text vectors [B, d] of tokenized documents."""
        return self.project(self.pool(input_ids, attention_mask))

    def combine(self, text: torch.Tensor, id_rows: torch.Tensor) -> torch.Tensor:
        """Unit item vectors from unit text vectors and ID rows (NO_ID for a text-only vector)."""
        return F.normalize(text + self.id_embedding(id_rows), dim=-1)

    def bias(self, text: torch.Tensor, id_rows: torch.Tensor) -> torch.Tensor:
        """Item bias [B] from unit text vectors and ID rows."""
        return self.text_bias(text).squeeze(-1) + self.id_bias(id_rows).squeeze(-1)


class UserTower(nn.Module):
    def __init__(self, dim: int, history_length: int, layers: int, heads: int):
        super().__init__()
        self.history_length = history_length
        # Position 0 is the most recent item.
        self.recency = nn.Embedding(history_length, dim)
        nn.init.zeros_(self.recency.weight)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.TransformerEncoderLayer(
                dim, heads, dim_feedforward=2 * dim, dropout=0.1, batch_first=True, norm_first=True
            )
            # Zero residual branches: the layer starts as the identity.
            nn.init.zeros_(layer.self_attn.out_proj.weight)
            nn.init.zeros_(layer.self_attn.out_proj.bias)
            nn.init.zeros_(layer.linear2.weight)
            nn.init.zeros_(layer.linear2.bias)
            self.layers.append(layer)
        self.key = nn.Linear(dim, dim, bias=False)
        self.query = nn.Parameter(torch.zeros(dim))
        self.projection = _identity_linear(dim)

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """history [B, L, d] item vectors, oldest first, right-aligned; mask [B, L] True = item.

        Returns [B, d] unit vectors; a row with no item returns zeros.
        """
        length = history.shape[1]
        recency = torch.arange(length - 1, -1, -1, device=history.device)
        x = history + self.recency(recency).unsqueeze(0)
        has_items = mask.any(dim=1, keepdim=True)
        # An empty row would make attention NaN: let it attend to its (zero) slots, then zero it.
        attend = mask | ~has_items
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~attend)
        weights = self._weights(x @ self._score_vector(), mask, attend)
        pooled = (weights.unsqueeze(-1) * x).sum(1)
        return F.normalize(self.projection(pooled), dim=-1) * has_items

    def forward_rows(self, table: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``forward(table[rows] * mask, mask)``: the history as [B, L] rows of a [V, d] table of
        item vectors (each distinct vector once).

        Without layers nothing of size [B, L, d] is built: scores are looked up from ``table @ q``
        and the pooling is one ``embedding_bag``. On cached encoder outputs the histories are
        most of a training step."""
        if len(self.layers):
            return self.forward(table[rows] * mask.unsqueeze(-1), mask)
        length = rows.shape[1]
        recency = self.recency(torch.arange(length - 1, -1, -1, device=table.device))  # [L, d]
        query = self._score_vector()
        scores = (table @ query)[rows] + (recency @ query).unsqueeze(0)
        has_items = mask.any(dim=1, keepdim=True)
        attend = mask | ~has_items
        weights = self._weights(scores, mask, attend)
        pooled = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum") + weights @ recency
        return F.normalize(self.projection(pooled), dim=-1) * has_items

    def _score_vector(self) -> torch.Tensor:
        """key(x) @ query as x @ (query W): a matrix-vector product, not a [B, L, d] x [d, d] one."""
        return self.query @ self.key.weight / math.sqrt(self.query.shape[0])

    @staticmethod
    def _weights(scores: torch.Tensor, mask: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores.masked_fill(~attend, float("-inf")), dim=1) * mask


class TwoTowerModel(nn.Module):
    def __init__(self, encoder: nn.Module, config: TwoTowerConfig, id_vocab: pd.Index | None = None):
        super().__init__()
        self.config = config
        self.id_vocab = pd.Index([] if id_vocab is None else list(id_vocab), dtype=object)
        self.item_tower = ItemTower(encoder, config.dim, len(self.id_vocab), config.side_dim)
        self.user_tower = UserTower(config.dim, config.history_length, config.user_layers, config.user_heads)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(config.temperature)))

    @property
    def temperature(self) -> torch.Tensor:
        # Bounded so a runaway value cannot make the softmax degenerate.
        return self.log_temperature.exp().clamp(0.01, 1.0)

    def id_rows(self, item_ids) -> np.ndarray:
        """ID-embedding rows of catalogue item ids (NO_ID for items without one)."""
        if len(self.id_vocab) == 0:
            return np.zeros(len(item_ids), dtype=np.int64)
        return (self.id_vocab.get_indexer(pd.Index(list(item_ids), dtype=object)) + 1).astype(np.int64)

    def encoder_fingerprint(self) -> str:
        """What the transformer's pooled outputs depend on: its weights and the token budget.

        Models with the same fingerprint (a night's evaluation model and the served model
        continued from it with the transformer frozen) share cached encoder outputs."""
        import hashlib

        h = hashlib.sha256(f"max_length={self.config.max_length}".encode())
        for name, tensor in sorted(self.item_tower.encoder.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def items_from_pooled(
        self, pooled: torch.Tensor, id_rows: torch.Tensor, side: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit item vectors [n, d], biases [n]) from the transformer's pooled outputs (and the
        items' side vectors): the cheap rest of the item tower (projection, ID embedding, bias)."""
        text = self.item_tower.project(pooled, side)
        return self.item_tower.combine(text, id_rows), self.item_tower.bias(text, id_rows)

    def encode_items(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, id_rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit item vectors [B, d], item biases [B])."""
        text = self.item_tower.text(input_ids, attention_mask)
        if id_rows is None:
            id_rows = torch.zeros(len(text), dtype=torch.long, device=text.device)
        return self.item_tower.combine(text, id_rows), self.item_tower.bias(text, id_rows)

    def score(self, users: torch.Tensor, item_vectors: torch.Tensor, item_bias: torch.Tensor) -> torch.Tensor:
        """Logits [u, n]: cosine / temperature + item bias."""
        return users @ item_vectors.T / self.temperature + item_bias.unsqueeze(0)

    def encode_users(self, item_vectors: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Unit user vectors [B, d] of [B, L] histories: right-aligned rows of ``item_vectors``
        [n, d] (catalogue indices, or any table's), PAD where empty."""
        mask = history != PAD
        return self.user_tower.forward_rows(item_vectors, history.clamp(min=0), mask)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.item_tower.encoder.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        encoder_ids = {id(p) for p in self.item_tower.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids and p.requires_grad]

    def freeze_encoder_layers(self, trainable_layers: int) -> None:
        """Fine-tune only the top ``trainable_layers`` transformer layers (-1 = all, 0 = none)."""
        encoder = self.item_tower.encoder
        for p in encoder.parameters():
            p.requires_grad = trainable_layers != 0
        if trainable_layers > 0:
            for p in encoder.parameters():
                p.requires_grad = False
            for layer in _encoder_layers(encoder)[-trainable_layers:]:
                for p in layer.parameters():
                    p.requires_grad = True

    def with_id_vocab(self, id_vocab: pd.Index) -> "TwoTowerModel":
        """A copy of this model whose ID tables cover ``id_vocab``; shared ids keep their rows."""
        other = TwoTowerModel(self.item_tower.encoder, self.config, id_vocab)
        id_tables = ("item_tower.id_embedding.weight", "item_tower.id_bias.weight")
        other.load_state_dict({k: v for k, v in self.state_dict().items() if k not in id_tables}, strict=False)
        old = self.id_rows(other.id_vocab)
        keep = np.flatnonzero(old > NO_ID)
        new_rows, old_rows = torch.as_tensor(keep + 1), torch.as_tensor(old[keep])
        with torch.no_grad():
            for name in ("id_embedding", "id_bias"):
                getattr(other.item_tower, name).weight[new_rows] = getattr(self.item_tower, name).weight[old_rows]
        return other

    # Checkpoints: the encoder in Hugging Face format, the rest in safetensors, ids in Parquet.
    def save(self, directory: str | Path, tokenizer) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.item_tower.encoder.save_pretrained(directory / ENCODER_DIR, safe_serialization=True)
        tokenizer.save_pretrained(directory / ENCODER_DIR)
        towers = {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith("item_tower.encoder.")
        }
        save_file(towers, str(directory / TOWERS_FILE))
        pq.write_table(pa.table({ITEM_COL: pa.array(list(self.id_vocab), pa.string())}), directory / ID_VOCAB_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu"):
        """Return (model, tokenizer) from a checkpoint folder written by ``save``."""
        import pyarrow.parquet as pq
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        directory = Path(directory)
        config = TwoTowerConfig(**json.loads((directory / CONFIG_FILE).read_text()))
        tokenizer = AutoTokenizer.from_pretrained(directory / ENCODER_DIR)
        encoder = AutoModel.from_pretrained(directory / ENCODER_DIR)
        id_vocab = pd.Index(pq.read_table(directory / ID_VOCAB_FILE).column(ITEM_COL).to_pylist(), dtype=object)
        model = cls(encoder, config, id_vocab)
        missing, unexpected = model.load_state_dict(load_file(str(directory / TOWERS_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith("item_tower.encoder.")]
        if missing or unexpected:
            raise ValueError(
                f"{directory}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})"
            )
        return model.to(device).eval(), tokenizer

    @classmethod
    def from_encoder(
        cls,
        encoder_name: str,
        history_length: int,
        max_length: int,
        temperature: float,
        id_vocab: pd.Index | None = None,
        user_layers: int = 1,
        seed: int = 0,
        side_dim: int = 0,
    ):
        """A fresh model around a pretrained encoder; returns (model, tokenizer).

        The new layers are initialised from ``seed``, so equal seeds give equal models.
        """
        from recsys_lib.models.encoder import load_encoder

        tokenizer, encoder = load_encoder(encoder_name)
        dim = encoder.config.hidden_size
        config = TwoTowerConfig(
            dim=dim,
            history_length=history_length,
            max_length=max_length,
            temperature=temperature,
            base_encoder=encoder_name,
            user_layers=user_layers,
            user_heads=next(h for h in (4, 2, 1) if dim % h == 0),
            side_dim=side_dim,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(encoder, config, id_vocab), tokenizer


def _encoder_layers(encoder: nn.Module) -> list[nn.Module]:
    for path in ("encoder.layer", "layers", "transformer.layer", "encoder.layers"):
        node = encoder
        try:
            for part in path.split("."):
                node = getattr(node, part)
        except AttributeError:
            continue
        return list(node)
    raise ValueError(f"cannot find the transformer layers of {type(encoder).__name__}")


def sampled_softmax_loss(
    users: torch.Tensor,
    candidates: torch.Tensor,
    positive_ids: torch.Tensor,
    candidate_ids: torch.Tensor,
    temperature: torch.Tensor | float,
    log_q: torch.Tensor | None = None,
    candidate_bias: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over candidates where row i's positive is candidate i.

    Args:
        users: [B, d] unit vectors.
        candidates: [C, d] unit vectors, C >= B; the first B are the rows' positives (in-batch
            negatives for the other rows), the rest extra sampled negatives.
        positive_ids, candidate_ids: [B] and [C] catalogue indices; a candidate that is the
            row's own positive item anywhere but column i is masked out (it is not a negative).
        log_q: [C] log of each candidate's expected count in a batch; subtracting it corrects
            the popularity bias of the sampled negatives (Yi et al., 2019).
        candidate_bias: [C] item biases added to every row's logits.
        weights: [B] each row's weight in the mean (None: a plain mean).
    """
    logits = users @ candidates.T / temperature
    if candidate_bias is not None:
        logits = logits + candidate_bias.unsqueeze(0)
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    same = positive_ids.unsqueeze(1) == candidate_ids.unsqueeze(0)
    rows = torch.arange(users.shape[0], device=users.device)
    same[rows, rows] = False
    logits = logits.masked_fill(same, float("-inf"))
    if weights is None:
        return F.cross_entropy(logits, rows)
    losses = F.cross_entropy(logits, rows, reduction="none")
    return (losses * weights).sum() / weights.sum().clamp(min=1e-12)


# Batched inference, shared by training (cached vectors), embedding and recommendation.
@dataclass
class TokenizedDocuments:
    """Documents tokenized once, padded to ``max_length``; batches are trimmed to their longest."""

    input_ids: torch.Tensor  # [n, max_length]
    attention_mask: torch.Tensor  # [n, max_length]

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], max_length: int, chunk: int = 50_000) -> "TokenizedDocuments":
        """Tokenized in chunks: the tokenizer's per-document objects for a whole million-item
        catalogue at once would take gigabytes."""
        texts = list(texts)
        ids, masks = [], []
        for start in range(0, max(len(texts), 1), chunk):
            enc = tokenizer(
                texts[start : start + chunk],
                padding="max_length",
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            ids.append(enc["input_ids"])
            masks.append(enc["attention_mask"])
        return cls(torch.cat(ids), torch.cat(masks))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def subset(self, rows) -> "TokenizedDocuments":
        index = torch.as_tensor(rows, dtype=torch.long)
        return TokenizedDocuments(self.input_ids[index], self.attention_mask[index])

    def batch(self, index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.attention_mask[index]
        width = max(1, int(mask.sum(1).max()))
        return self.input_ids[index, :width].to(device), mask[:, :width].to(device)

    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1)


def autocast(device: torch.device, cpu_bf16: bool = False):
    """bf16 autocast on CUDA (and, with ``cpu_bf16``, on CPU); a no-op context elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16 and device.type == "cpu")


@torch.no_grad()
def embed_text(
    model: TwoTowerModel, docs: TokenizedDocuments, batch_size: int, device, pooled: bool = False,
    cpu_bf16: bool = False,
) -> torch.Tensor:
    """Unit text vectors [n, d] (float32) of every document, on ``device``; with ``pooled``, the
    transformer's pooled outputs before the projection (what training caches). ``cpu_bf16``:
    bf16 autocast on CPU too (``embed.runtime`` torch-bf16).

    Documents are processed in length order so each batch carries little padding.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    order = torch.argsort(docs.lengths(), descending=True)
    out = torch.empty(len(docs), model.config.dim, device=device)
    progress = Progress(log, "encode", len(docs), "documents")
    for start in range(0, len(docs), batch_size):
        index = order[start : start + batch_size]
        ids, mask = docs.batch(index, device)
        with autocast(device, cpu_bf16):
            encoded = model.item_tower.pool(ids, mask) if pooled else model.item_tower.text(ids, mask)
            out[index.to(device)] = encoded.float()
        progress.advance(len(index))
    model.train(was_training)
    return out


@torch.no_grad()
def embed_documents(
    model: TwoTowerModel, docs: TokenizedDocuments, batch_size: int, device, id_rows: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(item vectors [n, d], item biases [n]): text plus, for warm items, their ID rows."""
    text = embed_text(model, docs, batch_size, device)
    rows = torch.zeros(len(docs), dtype=torch.long) if id_rows is None else torch.as_tensor(id_rows)
    rows = rows.to(text.device)
    return model.item_tower.combine(text, rows), model.item_tower.bias(text, rows)


def history_matrix(histories: list[np.ndarray], history_length: int) -> np.ndarray:
    """Right-aligned [n, history_length] matrix of catalogue indices, PAD where empty.

    Each history is oldest first; only the latest ``history_length`` items are kept.
    """
    out = np.full((len(histories), history_length), PAD, dtype=np.int64)
    for row, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-history_length:]
        if len(h):
            out[row, -len(h) :] = h
    return out


@torch.no_grad()
def embed_users(
    model: TwoTowerModel, item_vectors: torch.Tensor, history: np.ndarray, batch_size: int = 4096
) -> torch.Tensor:
    """User vectors [n, d] from a right-aligned history matrix (see ``history_matrix``)."""
    device = item_vectors.device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(history), batch_size):
        h = torch.as_tensor(history[start : start + batch_size], device=device)
        out.append(model.encode_users(item_vectors, h).float())
    model.train(was_training)
    if not out:
        return torch.empty(0, model.config.dim, device=device)
    return torch.cat(out)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)

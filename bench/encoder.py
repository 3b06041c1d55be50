"""Bulk-embedding throughput and quality of the bundled MiniLM by runtime, in one run.

Rows: plain transformers (the baseline: documents in file order, each batch padded to its
longest), the pipeline's torch path (length-ordered batches), ONNX Runtime fp32 and ONNX Runtime
int8 (``recsys_lib.models.inference.py``). Quality is measured against the torch fp32
vectors of the same documents: mean cosine, and the item-to-item top-10 overlap (each item's
ten nearest items by cosine, as the item_similar table has them). Documents are the bundled
MovieLens sample's items, built as the features stage builds them.

    python -m bench.encoder                   # 3,000 documents, best of 2 passes per row
    python -m bench.encoder --sample 9742 --repeat 1

Export and quantisation run once per fine-tuned encoder and are reported apart.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def documents(sample: int, seed: int = 0) -> list[str]:
    """Item documents of the bundled sample (title. categories. Tags: tags), shuffled."""
    from recsys_lib.data import movielens

    _, items = movielens.load(movielens.BUNDLED_SAMPLE)
    texts = []
    for row in items.itertuples():
        parts = [row.title, row.categories.replace("|", ", ") if isinstance(row.categories, str) else ""]
        if isinstance(row.tags, str) and row.tags:
            parts.append("Tags: " + row.tags.replace("|", ", "))
        texts.append(". ".join(p for p in parts if p))
    order = np.random.default_rng(seed).permutation(len(texts))[:sample]
    return [texts[i] for i in order]


def top10_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    def neighbours(m):
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        sims = m @ m.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k, axis=1)[:, :k]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def best_rate(run, n: int, repeat: int) -> tuple[np.ndarray, float]:
    best, out = 0.0, None
    for _ in range(repeat):
        started = time.perf_counter()
        out = run()
        best = max(best, n / (time.perf_counter() - started))
    return out, best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="passes per row; the best is reported")
    args = parser.parse_args(argv)

    from recsys_lib.models.inference import cpu_runs_bf16, onnx_pooler
    from recsys_lib.models.two_tower import TokenizedDocuments, TwoTowerModel, embed_text, mean_pool

    texts = documents(args.sample)
    model, tokenizer = TwoTowerModel.from_encoder("bundled:all-MiniLM-L6-v2", 20, args.max_length, 0.05)
    model.eval()
    docs = TokenizedDocuments.from_texts(tokenizer, texts, args.max_length)
    n = len(texts)

    @torch.no_grad()
    def plain():  # what a first script does: file order, each batch padded to its longest
        out = []
        encoder = model.item_tower.encoder
        for start in range(0, n, args.batch_size):
            batch = tokenizer(texts[start : start + args.batch_size], padding=True, truncation=True,
                              max_length=args.max_length, return_tensors="pt")  # fmt: skip
            hidden = encoder(**batch).last_hidden_state
            out.append(mean_pool(hidden, batch["attention_mask"]))
        return torch.cat(out).numpy()

    rows = {}
    rows["transformers, file order (baseline)"] = best_rate(plain, n, args.repeat)
    rows["torch, length-ordered (torch)"] = best_rate(
        lambda: embed_text(model, docs, args.batch_size, "cpu", pooled=True).numpy(), n, args.repeat
    )
    rows[f"torch bf16 (torch-bf16{', auto here' if cpu_runs_bf16() else ''})"] = best_rate(
        lambda: embed_text(model, docs, args.batch_size, "cpu", pooled=True, cpu_bf16=True).numpy(), n, args.repeat
    )
    prepare = {}
    with tempfile.TemporaryDirectory() as cache:
        for runtime in ("onnx", "onnx-int8"):
            started = time.perf_counter()
            pooler = onnx_pooler(model, runtime, Path(cache))
            prepare[runtime] = time.perf_counter() - started
            pooler.pool(TokenizedDocuments(docs.input_ids[:8], docs.attention_mask[:8]), 8)  # warm-up
            label = f"ONNX Runtime {'fp32' if runtime == 'onnx' else 'int8'} ({runtime})"
            rows[label] = best_rate(lambda p=pooler: p.pool(docs, args.batch_size), n, args.repeat)

    reference = rows["torch, length-ordered (torch)"][0]
    baseline = rows["transformers, file order (baseline)"][1]
    print(f"\n{n:,} MovieLens item documents, max_length {args.max_length}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads; best of {args.repeat}")  # fmt: skip
    print(f"{'runtime':<48}{'items/s':>9}{'x base':>8}{'cosine':>9}{'top-10 overlap':>16}")
    for label, (vectors, rate) in rows.items():
        print(f"{label:<48}{rate:>9.0f}{rate / baseline:>8.2f}{mean_cosine(vectors, reference):>9.4f}"
              f"{top10_overlap(vectors, reference):>16.3f}")  # fmt: skip
    # Once per fine-tuned encoder: export (onnx), then quantisation of that export (onnx-int8).
    print("one-off per encoder: " + ", ".join(f"{k} {s:.1f} s" for k, s in prepare.items()))


if __name__ == "__main__":
    main()

"""Top-N at scale: exact blocked matrix multiply against FAISS flat and HNSW, in one run.

Every user's top-k over the whole catalogue by inner product, as the recommend stage asks the
index (rows ``[unit vector, bias]``, queries ``[user / T, 1]``: d + 1 dimensions). Rows:

- ``gemm-numpy``: users in blocks of ``--block`` (a 256 MB score matrix by default),
  ``scores = Q @ V.T`` (BLAS sgemm), then
  ``argpartition`` for the k best and a sort of those k;
- ``gemm-torch``: the same with ``torch.mm`` and ``torch.topk``;
- ``faiss-flat``: ``IndexFlatIP.search`` (exact; FAISS blocks and selects itself);
- ``faiss-hnsw``: ``IndexHNSWFlat`` (M 32, efSearch 128, the ``[index]`` defaults), its build time
  apart, recall@k against exact.

Effective GFLOP/s counts the multiply only (2 x users x items x dims) over the whole search
time, selection included, and is printed next to this machine's sgemm peak, measured in the
same run on square 4096 matrices. Vectors are seeded and clustered (a mixture of 256 Gaussian
directions), so HNSW meets the neighbourhood structure real embeddings have. Cost is linear in
users, so a run on a user sample is extrapolated to ``--total-users``.

    python -m bench.topn                                  # 10,000 users x 200,000 items
    python -m bench.topn --items 1000000 --users 2000     # the 1M catalogue, extrapolated to 1M users
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def vectors(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """``n`` unit vectors around seeded cluster centres, plus a bias column (item rows)."""
    points = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def sgemm_peak(size: int = 4096, repeat: int = 3) -> float:
    """Best GFLOP/s of a square float32 matrix multiply on this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def gemm_numpy(queries: np.ndarray, rows: np.ndarray, k: int, block: int) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ rows.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + block] = np.take_along_axis(top, order, axis=1)
    return out


def gemm_torch(queries: np.ndarray, rows: np.ndarray, k: int, block: int) -> np.ndarray:
    import torch

    matrix = torch.from_numpy(rows)
    out = np.empty((len(queries), k), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(queries), block):
            scores = torch.mm(torch.from_numpy(queries[start : start + block]), matrix.T)
            out[start : start + block] = torch.topk(scores, k, dim=1).indices.numpy()
    return out


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000, help="users searched in this run")
    parser.add_argument("--total-users", type=int, default=1_000_000, help="users the times are extrapolated to")
    parser.add_argument("--dim", type=int, default=384, help="vector dimensions (the index adds one for the bias)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--block", type=int, help="users per matrix multiply (default: a 256 MB score block)")
    parser.add_argument("--skip-hnsw", action="store_true")
    args = parser.parse_args(argv)
    args.block = args.block or max(1, min(4096, 2**26 // args.items))

    import faiss

    rng = np.random.default_rng(7)
    centres = rng.standard_normal((256, args.dim), dtype=np.float32)
    items = vectors(args.items, args.dim, rng, centres)
    rows = np.hstack([items, 0.1 * rng.standard_normal((args.items, 1), dtype=np.float32)])
    users = vectors(args.users, args.dim, rng, centres)
    queries = np.hstack([users / 0.05, np.ones((args.users, 1), np.float32)]).astype(np.float32)
    dims = args.dim + 1
    peak = sgemm_peak()
    flops = 2.0 * args.users * args.items * dims
    threads = os.cpu_count()
    print(f"{args.users:,} users x {args.items:,} items x {dims} dims, top-{args.k}; {threads} CPU threads; "
          f"blocks of {args.block} users; sgemm peak {peak:,.0f} GFLOP/s (4096^3, same run)")  # fmt: skip

    results = []

    def timed(name, run, build_seconds=0.0):
        start = time.perf_counter()
        found = run()
        seconds = time.perf_counter() - start
        results.append((name, build_seconds, seconds, found))

    timed("gemm-numpy", lambda: gemm_numpy(queries, rows, args.k, args.block))
    timed("gemm-torch", lambda: gemm_torch(queries, rows, args.k, args.block))
    flat = faiss.IndexFlatIP(dims)
    flat.add(rows)
    timed("faiss-flat", lambda: flat.search(queries, args.k)[1])
    if not args.skip_hnsw:
        start = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dims, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 64
        hnsw.add(rows)
        hnsw.hnsw.efSearch = 128
        timed("faiss-hnsw", lambda: hnsw.search(queries, args.k)[1], time.perf_counter() - start)

    exact = results[0][3]
    scale = args.total_users / args.users
    print(f"\n{'method':<12}{'build s':>10}{'search s':>10}{'users/s':>11}{'GFLOP/s':>10}{'% peak':>8}"
          f"{'recall@k':>10}{f'{args.total_users:,} users':>18}")  # fmt: skip
    for name, build, seconds, found in results:
        gflops = flops / seconds / 1e9
        extrapolated = seconds * scale / 60
        print(f"{name:<12}{build:>10.1f}{seconds:>10.1f}{args.users / seconds:>11,.0f}{gflops:>10.0f}"
              f"{100 * gflops / peak:>7.0f}%{recall(found, exact):>10.3f}{extrapolated:>14.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()

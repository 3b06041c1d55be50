"""Stage-by-stage time and peak memory of the nightly pipeline on a seeded synthetic dataset.

Each stage runs as its own process (``python -m jobs.<stage>``), exactly as a scheduler would
run it, against a fresh data root; the table reports wall time and the process' peak resident
memory (ru_maxrss). The encoder is a tiny random BERT built from a config (the bundled MiniLM
tokenizer), so the numbers measure the pipeline's data path (Spark, embedding loop, FAISS,
ranking, checks, Parquet), not the transformer: MiniLM embedding throughput on the machine is
measured separately (``--encoder-sample``) and the time for the whole catalogue extrapolated.
Peak memory is the sampled resident set of the stage's process tree (Spark's JVM included).

    python -m bench.run_bench --users 1000000 --items 1000000          # the 1M x 1M target
    python -m bench.run_bench --users 50000 --items 50000 --save bench/results/50k.json
    python -m bench.run_bench --users 50000 --items 50000 --baseline bench/results/50k.json

Not run in CI. Results land in bench/results/ (git-ignored) when --save is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_stage(stage: str, ds: str, env: dict[str, str], log_dir: Path) -> dict[str, float]:
    """Run one stage in its own process; wall seconds and the peak resident memory of its whole
    process tree (Spark's JVM included), sampled every 100 ms."""
    import psutil

    started = time.perf_counter()
    peak = 0
    with open(log_dir / f"{stage}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", f"jobs.{stage}", "--ds", ds], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed; see {log_dir / f'{stage}.log'}")
    return {"seconds": seconds, "peak_mib": peak / 2**20}


def encoder_throughput(sample: int) -> float:
    """Items per second of the bundled MiniLM over synthetic item documents, on this machine."""
    import torch

    from recsys_lib.data import synthetic
    from recsys_lib.models.two_tower import TokenizedDocuments, TwoTowerModel, embed_documents

    _, items = synthetic.generate(n_users=10, n_items=sample, seed=1)
    texts = (items["title"] + ". " + items["categories"] + ". " + items["description"]).tolist()
    model, tokenizer = TwoTowerModel.from_encoder("bundled:all-MiniLM-L6-v2", 20, 32, 0.05)
    docs = TokenizedDocuments.from_texts(tokenizer, texts, 32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    embed_documents(model.to(device), docs, 256, device)
    return sample / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--per-user", type=float, default=20.0, help="mean interactions per user")
    parser.add_argument("--train-steps", type=int, default=50, help="fine-tuning steps")
    parser.add_argument("--frozen-steps", type=int, default=100, help="steps on cached encoder outputs first")
    parser.add_argument("--encoder-sample", type=int, default=2_000, help="items for the MiniLM throughput (0 = skip)")
    parser.add_argument("--save", help="write the results as JSON here")
    parser.add_argument("--baseline", help="an earlier --save file to compare against")
    parser.add_argument("--keep", action="store_true", help="keep the data root (printed)")
    args = parser.parse_args(argv)

    from jobs.pipeline import STAGES
    from recsys_lib.data import land_raw_drop, synthetic
    from recsys_lib.models.encoder import save_random_encoder
    from recsys_lib.settings import load_settings
    from recsys_lib.storage import Storage

    root = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    started = time.perf_counter()
    interactions, items = synthetic.generate(args.users, args.items, args.per_user, seed=42)
    ds = synthetic.last_day(interactions)
    generate_seconds = time.perf_counter() - started
    encoder = save_random_encoder(root / "encoder", hidden_size=64, layers=2)
    config = root / "bench.toml"
    config.write_text(
        f'[model]\nencoder = "{encoder}"\n[train]\nmax_steps = {args.train_steps}\nrefresh_every = {args.train_steps}\n'
        f"frozen_steps = {args.frozen_steps}\n[evaluate]\nk = [10, 20]\n"
    )
    env = {**os.environ, "RECSYS_DATA_ROOT": str(root / "data"), "RECSYS_CONFIG": str(config)}
    land_raw_drop(Storage(load_settings(env=env)), ds, interactions, items, fmt="parquet")
    results = {"generate": {"seconds": generate_seconds, "peak_mib": float("nan")}}
    (root / "logs").mkdir()
    # Every stage but evaluate: its dense baselines score users x items, which is for samples,
    # not a million of each (README, Scale and limits). The first publish needs no gate.
    for stage in [s for s in STAGES if s != "evaluate"]:
        results[stage] = run_stage(stage, ds, env, root / "logs")
        print(f"  {stage:<12} {results[stage]['seconds']:>8.1f} s {results[stage]['peak_mib']:>9.0f} MiB", flush=True)
    meta = {
        "users": args.users,
        "items": args.items,
        "interactions": len(interactions),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    if args.encoder_sample:
        rate = encoder_throughput(args.encoder_sample)
        meta["minilm_items_per_second"] = rate
        meta["minilm_catalogue_minutes"] = args.items / rate / 60
    report(results, meta, json.loads(Path(args.baseline).read_text()) if args.baseline else None)
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps({"meta": meta, "stages": results}, indent=2))
    if args.keep:
        print(f"data root: {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def report(results: dict, meta: dict, baseline: dict | None) -> None:
    print(
        f"\n{meta['users']:,} users, {meta['items']:,} items, {meta['interactions']:,} interactions; {meta['machine']}"
    )
    head = f"{'stage':<12}{'seconds':>10}{'peak MiB':>10}"
    if baseline:
        head += f"{'base s':>10}{'base MiB':>10}{'time x':>8}"
    print(head)
    for stage, r in results.items():
        line = f"{stage:<12}{r['seconds']:>10.1f}{r['peak_mib']:>10.0f}"
        if baseline and stage in baseline["stages"]:
            b = baseline["stages"][stage]
            line += f"{b['seconds']:>10.1f}{b['peak_mib']:>10.0f}{r['seconds'] / max(b['seconds'], 1e-9):>8.2f}"
        print(line)
    if "minilm_items_per_second" in meta:
        print(
            f"MiniLM embedding on this machine: {meta['minilm_items_per_second']:.0f} items/s, "
            f"{meta['minilm_catalogue_minutes']:.1f} min for the whole catalogue"
        )


if __name__ == "__main__":
    main()

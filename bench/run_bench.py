"""Stage-by-stage time and peak memory of the nightly pipeline on a seeded synthetic dataset.

Each stage runs as its own process (``python -m jobs.<stage>``), exactly as a scheduler would
run it, against a fresh data root; the table reports wall time and the peak resident memory of
the stage's process tree (Spark's JVM included), sampled. ``--encoder tiny`` (the default) is a
small random BERT built from a config (the bundled MiniLM tokenizer), so the numbers measure the
pipeline's data path (Spark, embedding loop, FAISS, ranking, checks, Parquet); ``--encoder
minilm`` runs the bundled all-MiniLM-L6-v2, the real cost. ``--nights 2`` adds a routine second
night on the same data (1% of the items edited, 0.5% new, a day of events: the incremental
path). evaluate ranks a seeded sample of 20,000 users against most-popular only (``evaluate.max_users``).

    python -m bench.run_bench --users 1000000 --items 1000000          # the 1M x 1M data path
    python -m bench.run_bench --users 100000 --items 100000 --encoder minilm --nights 2 \
        --set embed.runtime=onnx-int8 --save bench/results/100k-minilm.json
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
ENCODERS = {"tiny": None, "minilm": "bundled:all-MiniLM-L6-v2"}  # tiny: built from a config per run
EVALUATED_USERS = 20_000  # evaluate.max_users: the gate's seeded sample of users


def run_stage(stage: str, ds: str, env: dict[str, str], log_dir: Path) -> dict:
    """Run one stage in its own process: wall seconds, the peak resident memory of its whole
    process tree (Spark's JVM included), sampled every 100 ms, and the stage's printed summary."""
    import psutil

    started = time.perf_counter()
    peak = 0
    log_file = log_dir / f"{ds}-{stage}.log"
    with open(log_file, "w") as log:
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
        raise SystemExit(f"stage {stage} failed; see {log_file}")
    return {"seconds": seconds, "peak_mib": peak / 2**20, "summary": _summary(log_file.read_text())}


def _summary(log: str) -> dict:
    """The scalar entries of the JSON summary a job prints last (run_job), one level flattened."""
    start = log.rfind("\n{\n")
    try:
        summary = json.loads(log[start + 1 :]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}
    flat = {}
    for key, value in summary.items():
        for k, v in (value.items() if isinstance(value, dict) else [("", value)]):
            if isinstance(v, (int, float, str, bool)):
                flat[f"{key}.{k}" if k else key] = v
    return flat


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
    parser.add_argument("--encoder", choices=sorted(ENCODERS), default="tiny",
                        help="tiny: a small random BERT (the data path); minilm: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--nights", type=int, default=1, choices=[1, 2],
                        help="2: a second night on the same data (1%% of items edited, 0.5%% new, a day of events)")
    parser.add_argument("--train-steps", type=int, default=50, help="fine-tuning steps")
    parser.add_argument("--frozen-steps", type=int, default=100, help="steps on cached encoder outputs first")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="another setting for every stage, e.g. embed.runtime=onnx-int8")
    parser.add_argument("--encoder-sample", type=int, default=2_000, help="items for the MiniLM throughput (0 = skip)")
    parser.add_argument("--save", help="write the results as JSON here")
    parser.add_argument("--baseline", help="an earlier --save file to compare against")
    parser.add_argument("--keep", action="store_true", help="keep the data root (printed)")
    args = parser.parse_args(argv)  # fmt: skip

    import pandas as pd

    from jobs._cli import parse_overrides
    from jobs.pipeline import STAGES
    from recsys_lib.data import land_raw_drop, synthetic
    from recsys_lib.models.encoder import save_random_encoder
    from recsys_lib.schema import ITEM_COL
    from recsys_lib.settings import ENV_PREFIX, load_settings
    from recsys_lib.storage import Storage

    root = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    started = time.perf_counter()
    interactions, items = synthetic.generate(args.users, args.items, args.per_user, seed=42)
    ds = synthetic.last_day(interactions)
    generate_seconds = time.perf_counter() - started
    encoder = ENCODERS[args.encoder] or save_random_encoder(root / "encoder", hidden_size=64, layers=2)
    config = root / "bench.toml"
    # evaluate scores a sample of 20,000 users against most-popular only: the other baselines are
    # dense users x items models, for samples, not a million of each (README, Scale and limits).
    config.write_text(
        f'[model]\nencoder = "{encoder}"\n[train]\nmax_steps = {args.train_steps}\nrefresh_every = {args.train_steps}\n'
        f'frozen_steps = {args.frozen_steps}\n[evaluate]\nk = [10, 20]\nbaselines = ["popularity"]\n'
        f"max_users = {EVALUATED_USERS}\n"
    )
    env = {**os.environ, "RECSYS_DATA_ROOT": str(root / "data"), "RECSYS_CONFIG": str(config)}
    for key, value in parse_overrides(args.set).items():
        section, _, name = key.partition(".")
        env[f"{ENV_PREFIX}{section.upper()}__{name.upper()}"] = value
    storage = Storage(load_settings(env=env))
    land_raw_drop(storage, ds, interactions, items, fmt="parquet")
    nights = [{"generate": {"seconds": generate_seconds, "peak_mib": float("nan"), "summary": {}}}]
    (root / "logs").mkdir()
    for night in range(args.nights):
        if night:
            ds, events, drop = synthetic.next_day(interactions, items, edited=round(0.01 * len(items)),
                                                  new=round(0.005 * len(items)), events=len(interactions) // 30)
            land_raw_drop(storage, ds, events, drop, fmt="parquet")
            interactions, items = pd.concat([interactions, events]), pd.concat([items, drop]).drop_duplicates(
                ITEM_COL, keep="last")  # fmt: skip
            nights.append({})
        print(f"night {night + 1}, ds {ds}:", flush=True)
        for stage in STAGES:
            r = nights[-1][stage] = run_stage(stage, ds, env, root / "logs")
            line = f"  {stage:<12} {r['seconds']:>8.1f} s {r['peak_mib']:>9.0f} MiB"
            print(f"{line}  {_highlights(stage, r)}", flush=True)
    meta = {
        "users": args.users,
        "items": args.items,
        "interactions": len(interactions),
        "encoder": args.encoder,
        "settings": args.set,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    if args.encoder_sample:
        rate = encoder_throughput(args.encoder_sample)
        meta["minilm_items_per_second"] = rate
        meta["minilm_catalogue_minutes"] = args.items / rate / 60
    report(nights, meta, json.loads(Path(args.baseline).read_text()) if args.baseline else None)
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps({"meta": meta, "nights": nights}, indent=2))
    if args.keep:
        print(f"data root: {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _highlights(stage: str, result: dict) -> str:
    """What a stage's summary says about the night's work: documents through the transformer,
    items/s, the evaluation, the gate."""
    s, seconds = result["summary"], result["seconds"]
    if stage == "train" and "transformer_documents" in s:
        documents = s["transformer_documents"]
        return f"fine-tuned {bool(s.get('fine_tuned'))}, {documents:,.0f} documents through the transformer"
    if stage == "embed_items" and "encoded" in s:
        return f"{s['encoded']:,} items through the transformer ({s['encoded'] / seconds:,.0f} items/s of stage)"
    if stage == "evaluate":
        return ", ".join(f"{k.split('.', 1)[1]} {v:.4f}" for k, v in s.items() if k.startswith("ndcg_at_"))
    if stage == "publish":
        return f"version {s.get('version')}, live {s.get('live')}"
    return ""


def report(nights: list[dict], meta: dict, baseline: dict | None) -> None:
    print(
        f"\n{meta['users']:,} users, {meta['items']:,} items, {meta['interactions']:,} interactions, "
        f"{meta.get('encoder', 'tiny')} encoder {' '.join(meta.get('settings', []))}; {meta['machine']}"
    )
    # Older saved runs had one night under "stages".
    base = (baseline.get("nights") or [baseline["stages"]]) if baseline else []
    for n, results in enumerate(nights):
        head = f"night {n + 1:<6}{'seconds':>10}{'peak MiB':>10}"
        if n < len(base):
            head += f"{'base s':>10}{'base MiB':>10}{'time x':>8}"
        print(head)
        for stage, r in results.items():
            line = f"{stage:<12}{r['seconds']:>10.1f}{r['peak_mib']:>10.0f}"
            if n < len(base) and stage in base[n]:
                b = base[n][stage]
                line += f"{b['seconds']:>10.1f}{b['peak_mib']:>10.0f}{r['seconds'] / max(b['seconds'], 1e-9):>8.2f}"
            print(line)
        total = sum(r["seconds"] for r in results.values())
        print(f"{'total':<12}{total:>10.1f}  ({total / 60:.1f} min)")
    if "minilm_items_per_second" in meta:
        print(
            f"MiniLM embedding on this machine (plain transformers, fp32): {meta['minilm_items_per_second']:.0f} "
            f"items/s, {meta['minilm_catalogue_minutes']:.1f} min for the whole catalogue"
        )


if __name__ == "__main__":
    main()

"""Consecutive nights: does the nightly pipeline hold or improve, night after night?

Replays a dataset as nightly drops: the first night lands every event before a cut-off, each
following night the next slice of events (``--night-fraction`` of them, about one day's worth on
the bundled sample) and the items first rated in it. Every night runs the whole pipeline in this
process (``jobs.pipeline.run_all``: warm start from the champion, evaluation, the gate, publish)
and the table shows, per night, the candidate's evaluation, the champion's on the same split,
the gate's decision and whether the night published.

    python -m bench.nights                              # the bundled MovieLens sample, 3 more nights
    python -m bench.nights --nights 2 --set train.max_steps=100 --set train.frozen_steps=300

Not run in CI (a night is a full `make demo` run); results land in bench/results/ with --save.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path


def nightly_drops(interactions, items, nights: int, night_fraction: float):
    """(ds, interactions, items) per night: everything before the first cut-off, then slices of
    ``night_fraction`` of the events; each night's items are those first rated in its slice
    (the first night also gets the never-rated ones)."""
    import pandas as pd

    from recsys_lib.schema import ITEM_COL, TIMESTAMP_COL

    events = interactions.sort_values(TIMESTAMP_COL, kind="stable").reset_index(drop=True)
    first_rated = events.groupby(ITEM_COL)[TIMESTAMP_COL].min()
    ends = [len(events) - round(len(events) * night_fraction * k) for k in range(nights, -1, -1)]
    drops, start = [], 0
    for n, end in enumerate(ends):
        # Nights end at a day boundary, so each ds accepts every event of its slice and no later one.
        day = pd.to_datetime(events[TIMESTAMP_COL].iloc[end - 1], unit="s", utc=True).normalize()
        end = int((events[TIMESTAMP_COL] < (day + pd.Timedelta(days=1)).timestamp()).sum())
        if end <= start:
            continue
        window = events.iloc[start:end]
        new_items = set(window[ITEM_COL]) - set(first_rated[first_rated < window[TIMESTAMP_COL].min()].index)
        keep = items[ITEM_COL].isin(new_items) | (n == 0) & ~items[ITEM_COL].isin(first_rated.index)
        drops.append((day.date().isoformat(), window, items[keep]))
        start = end
    return drops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="a MovieLens folder (default: the bundled sample)")
    parser.add_argument("--nights", type=int, default=3, help="nights after the first")
    parser.add_argument("--night-fraction", type=float, default=0.01, help="share of the events per night")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--save", help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from jobs._cli import parse_overrides
    from jobs.pipeline import STAGES, run_stage
    from recsys_lib.data import land_raw_drop, movielens
    from recsys_lib.errors import PublishRefused
    from recsys_lib.settings import load_settings
    from recsys_lib.storage import Storage

    interactions, items = movielens.load(args.source or movielens.BUNDLED_SAMPLE)
    root = Path(tempfile.mkdtemp(prefix="recsys-nights-"))
    env = {**os.environ, "RECSYS_DATA_ROOT": str(root)}
    settings = load_settings(overrides=parse_overrides(args.set), env=env)
    rows = []
    for ds, events, new_items in nightly_drops(interactions, items, args.nights, args.night_fraction):
        land_raw_drop(Storage(settings), ds, events, new_items)
        started = time.perf_counter()
        results, minutes = {}, {}
        try:
            for stage in STAGES:  # one by one: a refused publish keeps the other stages' summaries
                stage_started = time.perf_counter()
                results[stage] = run_stage(stage, ds, None, results.get("train", {}).get("model_version"), settings)
                minutes[stage] = round((time.perf_counter() - stage_started) / 60, 2)
            published, reason = results["publish"]["version"], ""
        except PublishRefused as e:
            published, reason = None, str(e).splitlines()[0]
        report = Storage(settings).read_evaluation(ds)
        model, champion = report.model_metrics("model"), report.model_metrics("champion") or {}
        metric = report.primary_metric
        rows.append({
            "ds": ds, "events": len(events), "new_items": len(new_items), "model": model[metric],
            "champion": champion.get(metric), "best_baseline": report.best_baseline(),
            "baseline": report.model_metrics(report.best_baseline())[metric], "published": published,
            "refused": reason, "minutes": (time.perf_counter() - started) / 60,
            "fine_tuned": results["train"].get("fine_tuned"),
            "transformer_documents": results["train"].get("transformer_documents"),
            "embedded_by_transformer": results["embed_items"]["encoded"],
            "stage_minutes": minutes,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'ds':<12}{'events':>8}{'new items':>10}{'model':>9}{'champion':>10}{'baseline':>10}  published")
    for r in rows:
        champion = f"{r['champion']:.4f}" if r["champion"] is not None else "-"
        print(f"{r['ds']:<12}{r['events']:>8}{r['new_items']:>10}{r['model']:>9.4f}{champion:>10}"
              f"{r['baseline']:>10.4f}  {r['published'] or 'refused: ' + r['refused']}")  # fmt: skip
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps(rows, indent=2))
    print(f"data root: {root}")


if __name__ == "__main__":
    main()

"""The ``recsys`` command: the pipeline and its published tables from the command line.

An entry point like the stage jobs beside it: it parses arguments, calls the library (or, for
``run``, every stage through ``jobs.pipeline``) and prints. User errors (``NotRetryable``) end
with their one-line message, not a traceback (``recsys --verbose ...`` shows it), naming your
files rather than their copies in the raw drop.

recsys run --interactions FILE --items FILE [--users FILE] [--queries FILE] --output DIR_OR_URI [--ds DATE]
recsys benchmark --protocol P --interactions FILE --items FILE --ds DATE    the model and baselines on one split
recsys land-sample --ds DATE          stage the bundled MovieLens sample as that day's raw drop
recsys show [--users N]               the published tables, and a few users' history and top-10
recsys search "TEXT" [--user ID] [--k N]   the items a text query finds in the live version
recsys versions                       the published versions kept, the live one marked
recsys rollback [--to VERSION]        make an earlier published version live again
  (show, search, versions and rollback take run's --output / --data-root to address what it wrote)
recsys movielens (--release 1m | --source DIR) --dest DIR    MovieLens as files in the input contract
recsys atomic --source DIR --dest DIR  RecBole atomic files (.inter/.item/.user) in the input contract
recsys synthetic --users N --items M --dest DIR [--format parquet]   a seeded synthetic dataset
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobs._cli import logical_date, parse_overrides
from recsys_lib.errors import NothingPublished, NotRetryable
from recsys_lib.settings import Split, default_data_root, load_settings


def cmd_land_sample(args: argparse.Namespace) -> None:
    from recsys_lib.data import land_raw_drop, movielens
    from recsys_lib.storage import Storage

    settings = load_settings(config_file=args.config)
    folder = _source_folder(args) or movielens.BUNDLED_SAMPLE
    interactions, items = movielens.load(folder)
    written = land_raw_drop(Storage(settings), args.ds, interactions, items, users=movielens.load_users(folder))
    print(f"Landed {len(interactions):,} interactions and {len(items):,} items as the raw drop of {args.ds}:")
    for entity, uri in written.items():
        print(f"  {entity}: {uri}")


def _project_root(output: str) -> str:
    """A data root of its own for each output location, so datasets never mix in one lake."""
    slug = hashlib.sha256(output.encode()).hexdigest()[:10]
    return str(Path(default_data_root()) / "projects" / slug)


@contextmanager
def _landed_files(args: argparse.Namespace, settings) -> Iterator[None]:
    """The --interactions, --items, --users and --queries files as the raw drop of --ds while
    the block runs; if it fails, the earlier drop of that ds is put back."""
    from recsys_lib.lake import RAW_FORMATS, raw_format
    from recsys_lib.storage import Storage

    sources = {"interactions": args.interactions, "items": args.items, "users": args.users,
               "queries": getattr(args, "queries", None)}  # fmt: skip
    for entity, path in sources.items():
        if path is not None and Path(path).expanduser().is_dir():
            raise SystemExit(f"recsys {args.command}: --{entity} {path}: a directory, not a file")
        if path is not None and not Path(path).expanduser().is_file():
            raise SystemExit(f"recsys {args.command}: --{entity} {path}: no such file")
        if path is not None and raw_format(path) is None:
            raise SystemExit(f"recsys {args.command}: --{entity} {path}: the name must end in one of "
                             f"{', '.join(RAW_FORMATS)} (CSV, Parquet or JSON lines)")  # fmt: skip
    files = {entity: {} if path is None else {Path(path).name: Path(path).expanduser()}
             for entity, path in sources.items()}  # fmt: skip
    with Storage(settings).trial_raw_drops(args.ds, files) as landed:
        # raw-drop URI -> the file the user named, for error messages
        args.landed = {uri: sources[entity] for entity, uris in landed.items() for uri in uris}
        yield


def _located_settings(args: argparse.Namespace):
    """Settings for the location ``--output`` / ``--data-root`` name, exactly as ``recsys run``
    resolves them (so ``versions``, ``rollback`` and ``show`` address what ``run`` wrote)."""
    output = getattr(args, "output", None)
    data_root = getattr(args, "data_root", None)
    for flag, value in (("--output", output), ("--data-root", data_root)):
        if value is not None and not value.strip():
            raise SystemExit(f"recsys {args.command}: {flag} is empty: give a directory or an s3:// URI")
    overrides, env = parse_overrides(getattr(args, "set", None) or []), dict(os.environ)
    if output:
        output = output if "://" in output else str(Path(output).expanduser().resolve())
        overrides["storage.publish_root"] = output
        data_root = data_root or _project_root(output)
    if data_root:
        env["RECSYS_DATA_ROOT"] = data_root
    return load_settings(config_file=args.config, overrides=overrides, env=env)


def _count(value: str) -> int:
    """A positive whole number (argparse type)."""
    if not value.isdecimal() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return int(value)


def _count_or_zero(value: str) -> int:
    """A whole number, 0 or more (argparse type)."""
    if not value.isdecimal():
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {value!r}")
    return int(value)


def _number(rule: str, holds: typing.Callable[[float], bool]) -> typing.Callable[[str], float]:
    """An argparse type: a number for which ``holds`` (text and NaN never do)."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not holds(number):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {value!r}")
        return number

    return parse


_positive = _number("a number above 0", lambda v: v > 0)
_share = _number("a number between 0 and 1 (both excluded)", lambda v: 0 < v < 1)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (after --config); repeatable")  # fmt: skip


def _add_location(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", help="the published location `recsys run --output` wrote (a directory or s3:// URI)")
    p.add_argument("--data-root", help="the work data and MLflow store (default: as `recsys run` chose it)")


def cmd_run(args: argparse.Namespace) -> None:
    from jobs.pipeline import run_all
    from recsys_lib.storage import open_store

    settings = _located_settings(args)
    data_root = settings.data_root
    # A bad --output or blocked-items file fails now, not after training.
    open_store(settings.storage.publish_root, settings.storage).check_reachable()
    if settings.rules.blocked_items_file:
        from recsys_lib.rules import blocked_items_text
        from recsys_lib.storage import Storage

        blocked_items_text(settings.rules, Storage(settings).read_text)
    params = {"full_retrain": True} if args.full_retrain else None
    with _landed_files(args, settings):
        results = run_all(settings, args.ds, params)
    published = results["publish"]
    print(json.dumps(results, indent=2, default=str))
    print(f"\nPublished version {published['version']} at {published['location']}")
    if published["live"]:
        print(f"Latest pointer: {published['latest']}   (work data, MLflow store: {data_root})")
    else:
        print(f"Not made live: {args.ds} is older than the live version's ds (a backfill); `recsys rollback --to "
              f"{published['version']}` makes it live, or rerun with --set publish.backfill=true   "
              f"(work data, MLflow store: {data_root})")  # fmt: skip


def cmd_benchmark(args: argparse.Namespace) -> None:
    """The model (its evaluation model) and every baseline on one split of your files, in a data
    root of its own (no champion to warm-start from, nothing published)."""
    import tempfile

    from jobs.pipeline import EVALUATION_STAGES, run_all
    from recsys_lib.evaluation.protocols import BASELINES
    from recsys_lib.storage import Storage

    # The protocol's own settings win over --set.
    overrides = {**parse_overrides(args.set), "features.split": args.protocol,
                 "features.holdout_fraction": args.holdout_fraction}  # fmt: skip
    if not args.keep_cold_items:
        overrides["features.cold_item_fraction"] = 0.0  # every item in the protocol, as the benchmarks have it
    if args.baselines:
        overrides["evaluate.baselines"] = ",".join(BASELINES) if args.baselines == "all" else args.baselines
    load_settings(config_file=args.config, overrides=overrides)  # bad settings: one line, before any folder
    data_root = args.data_root
    if not data_root:
        base = Path(default_data_root()) / "benchmarks"
        base.mkdir(parents=True, exist_ok=True)
        data_root = tempfile.mkdtemp(prefix=f"{args.protocol}-", dir=base)
    env = {**os.environ, "RECSYS_DATA_ROOT": data_root}
    settings = load_settings(config_file=args.config, overrides=overrides, env=env)
    with _landed_files(args, settings):
        events = run_all(settings, args.ds, stages=("ingest", "features"))["features"]["events"]
        if not events.get("holdout"):
            raise SystemExit(
                f"recsys benchmark: the {args.protocol} split with --holdout-fraction {args.holdout_fraction} holds "
                f"out none of the {events.get('train', 0):,} events: nothing to score; raise --holdout-fraction"
            )
        run_all(settings, args.ds, stages=tuple(s for s in EVALUATION_STAGES if s not in ("ingest", "features")))
    report = Storage(settings).read_evaluation(args.ds)
    print(f"\n{args.protocol} split, holdout {args.holdout_fraction:.0%}, ds {args.ds}\n\n{report.to_text()}")
    print(f"\nReport: {Storage(settings).work.uri(Storage.run_output(Storage.EVALUATION_REPORT, args.ds))}")


def cmd_show(args: argparse.Namespace) -> None:
    import numpy as np

    from recsys_lib.reader import PublishedTables
    from recsys_lib.schema import HISTORY_COL, ITEM_COL, RANK_COL, SCORE_COL, TITLE_COL, USER_COL
    from recsys_lib.storage import FeatureTable, Storage

    settings = _located_settings(args)
    tables = PublishedTables.from_settings(settings)
    manifest = tables.manifest()
    ds = manifest["ds"]
    print(f"Published tables (version {manifest['version']}, model {manifest['model_version']}, ds {ds}):")
    for name, entry in manifest["tables"].items():
        print(f"  {name:<13} {entry['rows']:>9,} rows  {tables.store.uri(entry['files'][0]['key'])}")
    print(f"  latest pointer: {tables.store.uri(Storage.LATEST)}")
    storage = Storage(settings)
    evaluation = storage.evaluation_table(ds)
    if evaluation is not None:
        print("\nEvaluation on the holdout of " + evaluation)
    documents = storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds, columns=[ITEM_COL, TITLE_COL])
    titles = {item: _shortened(title) for item, title in zip(documents[ITEM_COL], documents[TITLE_COL])}
    histories = storage.read_features(FeatureTable.USER_HISTORIES, ds, columns=[USER_COL, HISTORY_COL])
    users = args.user or sorted(
        np.random.default_rng(args.seed)
        .choice(histories[USER_COL].to_numpy(), size=min(args.users, len(histories)), replace=False)
        .tolist(),
        key=_natural,
    )
    by_user = dict(zip(histories[USER_COL], histories[HISTORY_COL]))
    for user in users:
        history = list(by_user.get(user, []))
        recs = tables.recommendations_for(user)
        if not history and recs.empty:
            print(f"\nUser {user}: not in version {manifest['version']} (no history, no list)")
            continue
        print(f"\nUser {user}: {len(history)} items in history; most recent:")
        for item in reversed(history[-5:]):
            print(f"    - {titles.get(item, item)}")
        print(f"  Top {min(10, len(recs))} recommendations:")
        for row in recs.head(10).itertuples():
            print(
                f"    {getattr(row, RANK_COL):>2}. {titles.get(getattr(row, ITEM_COL), getattr(row, ITEM_COL))}"
                f"  ({getattr(row, SCORE_COL):.3f})"
            )


def cmd_search(args: argparse.Namespace) -> None:
    from recsys_lib.reader import PublishedTables
    from recsys_lib.schema import ITEM_COL, RANK_COL, SCORE_COL

    if not args.text.strip():
        raise SystemExit("recsys search: the query is empty: give some text, e.g. \"space adventure\"")
    settings = _located_settings(args)
    tables = PublishedTables.from_settings(settings)
    results = tables.search(args.text, k=args.k, user_id=args.user, version=args.version)
    manifest = tables.manifest(args.version)
    titles = _titles(settings, manifest["ds"])
    who = f" for user {args.user}" + ("" if results["personalised"].any() else " (no vector: not personalised)")
    shown = _shortened(args.text)
    print(f"{shown!r}{who if args.user else ''}, version {manifest['version']} ({manifest['model_version']}):")
    for row in results.itertuples():
        title = titles.get(getattr(row, ITEM_COL), "")
        print(f"{getattr(row, RANK_COL):>3}. {getattr(row, ITEM_COL):<12} {getattr(row, SCORE_COL):.3f}  "
              f"{_shortened(title)}")  # fmt: skip


def _shortened(text: str, width: int = 80) -> str:
    """One line of at most ``width`` characters (a title may be a page long)."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_session(args: argparse.Namespace) -> None:
    from recsys_lib.reader import PublishedTables
    from recsys_lib.schema import ITEM_COL, RANK_COL, SCORE_COL

    args.items = [item.strip() for item in args.items]  # as ingest reads ids: spaces trimmed
    settings = _located_settings(args)
    tables = PublishedTables.from_settings(settings)
    results = tables.for_session(args.items, k=args.k, version=args.version)
    manifest = tables.manifest(args.version)
    titles = _titles(settings, manifest["ds"])
    known = set(tables.known_items(args.items, version=args.version))
    unknown = [i for i in args.items if i not in known]
    skipped = f" (not in this version, left out: {', '.join(unknown)})" if unknown else ""
    print(f"after {', '.join(i for i in args.items if i in known)}{skipped}, version {manifest['version']} "
          f"({manifest['model_version']}):")  # fmt: skip
    for row in results.itertuples():
        title = titles.get(getattr(row, ITEM_COL), "")
        print(f"{getattr(row, RANK_COL):>3}. {getattr(row, ITEM_COL):<12} {getattr(row, SCORE_COL):.3f}  {title[:80]}")


def _titles(settings, ds: str) -> dict[str, str]:
    """Item id -> document from the work store when it is at hand (a service would join its own
    catalogue); empty otherwise."""
    from recsys_lib.schema import DOCUMENT_COL, ITEM_COL
    from recsys_lib.storage import FeatureTable, Storage

    try:
        documents = Storage(settings).read_features(FeatureTable.ITEM_DOCUMENTS, ds)
    except NotRetryable:
        return {}
    return dict(zip(documents[ITEM_COL], documents[DOCUMENT_COL]))


def cmd_versions(args: argparse.Namespace) -> None:
    from recsys_lib import publish as pub
    from recsys_lib.errors import StorageError
    from recsys_lib.evaluation.report import EvaluationReport
    from recsys_lib.storage import OutputTable, open_store

    settings = _located_settings(args)
    store = open_store(settings.storage.publish_root, settings.storage)
    try:
        live = pub.read_latest(store)
    except StorageError as e:  # still list what is kept: the repair names one of them
        print(f"recsys versions: {e}", file=sys.stderr)
        live = None
    versions = pub.list_versions(store)
    if not versions:
        raise NothingPublished(f"no published versions at {store.uri('')}")
    for m in versions:
        mark = "*" if live and m["version"] == live["version"] else " "
        rows = m["tables"][OutputTable.USER_TOPN]["rows"]
        quality = "not evaluated"
        if m.get("evaluation"):
            report = EvaluationReport.from_dict(m["evaluation"])
            quality = f"{report.primary_metric} {report.model_metrics()[report.primary_metric]:.4f}"
        print(f"{mark} {m['version']}  {m['created_at']}  {m['model_version']:<24} {rows:>10,} rows  {quality}")


def cmd_report(args: argparse.Namespace) -> None:
    from recsys_lib.reader import PublishedTables
    from recsys_lib.run_report import REPORT_FILE, RUN_REPORT

    tables = PublishedTables.from_settings(_located_settings(args))
    manifest = tables.manifest(args.version)
    files = manifest.get("artefacts", {}).get(RUN_REPORT, {}).get("files", [])
    report = next((f for f in files if f["key"].endswith("/" + REPORT_FILE)), None)
    if report is None:
        raise NothingPublished(f"version {manifest['version']} has no run report (published before reports, "
                               "or its report failed: see the publish task's log)")  # fmt: skip
    print(tables.store.uri(report["key"]))


def _run_stack(stack, announce) -> None:
    """Start ``stack``, ``announce(stack)`` (where things are; it may trigger a run), keep it up
    until Ctrl-C or SIGTERM, then stop everything it started."""
    import signal
    import time

    def stop_on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)  # `kill` stops the stack as Ctrl-C does
    with stack:
        try:
            announce(stack)
            while True:
                time.sleep(2)
                stack.check_alive()
        except KeyboardInterrupt:
            print("\nStopping ...")
    print("Stopped; nothing left running.")


def cmd_airflow(args: argparse.Namespace) -> None:
    from recsys_lib.stack import USER, LocalStack

    settings = _located_settings(args)
    print(f"Starting Airflow (api-server, scheduler, dag-processor, triggerer) and MLflow on {settings.data_root} ...")

    def announce(stack: LocalStack) -> None:
        print(f"\n  Airflow UI  {stack.airflow_url}   (log in as {USER} / {args.password})")
        print(f"  MLflow UI   {stack.mlflow_url}")
        print(f"  logs        {stack.logs}")
        print("\nTrigger recsys_nightly from the UI (Trigger, with params such as top_n) or the REST API;")
        print("recsys_downstream_example starts on its own when a run publishes. Ctrl-C stops everything.")

    _run_stack(LocalStack(settings, args.port, args.mlflow_port, args.password), announce)


def cmd_cluster_local(args: argparse.Namespace) -> None:
    from recsys_lib.data import land_raw_drop, movielens
    from recsys_lib.stack import USER, ClusterStack
    from recsys_lib.storage import Storage

    config = {"RECSYS_CONFIG": str(Path(args.config).resolve())} if args.config else {}
    stack = ClusterStack(_located_settings(args), args.port, args.mlflow_port, args.password, extra_env=config)
    print(f"Starting the cluster profile's stack under {stack.root}: Postgres, Redis, an S3 server, Spark "
          "standalone, MLflow, Airflow with a Celery worker ...")  # fmt: skip

    def announce(stack: ClusterStack) -> None:
        settings = stack.recsys_settings()
        storage = Storage(settings)
        if not storage.raw_files("items", args.ds):
            interactions, items = movielens.load(movielens.BUNDLED_SAMPLE)
            users = movielens.load_users(movielens.BUNDLED_SAMPLE)
            land_raw_drop(storage, args.ds, interactions, items, users=users)
            print(f"Landed the bundled MovieLens sample as the raw drop of {args.ds} in {settings.storage.work_root}")
        print(f"\n  Airflow UI     {stack.airflow_url}   (log in as {USER} / {args.password})")
        print(f"  MLflow UI      {stack.mlflow_url}")
        print(f"  Spark master   {stack.spark_ui_url}")
        print(f"  S3 server      {stack.s3_url}  (published tables: {settings.storage.publish_root})")
        print(f"  logs           {stack.logs}")
        print(f"\nTrigger recsys_nightly with the logical date {args.ds} (UI: Trigger, or --trigger).")
        print("Ctrl-C stops everything.")
        if args.trigger:
            run_id = stack.trigger("recsys_nightly", {}, logical_date=f"{args.ds}T00:00:00Z")
            print(f"Triggered {run_id}; waiting for it ...")
            run = stack.wait_for_run("recsys_nightly", run_id, timeout_s=6 * 3600)
            print(f"recsys_nightly {run_id}: {run['state']}")

    _run_stack(stack, announce)


def cmd_rollback(args: argparse.Namespace) -> None:
    from recsys_lib import publish as pub
    from recsys_lib.errors import RollbackRefused
    from recsys_lib.storage import open_store
    from recsys_lib.tracking import CHAMPION, Tracker

    settings = _located_settings(args)
    store = open_store(settings.storage.publish_root, settings.storage)

    def champion_of(manifest) -> str | None:
        """The registry version to make champion with the tables (None: the tables alone)."""
        name, _, version = manifest["model_version"].rpartition("/")
        return None if args.keep_champion or name != settings.tracking.registered_model else version

    def model_is_registered(target) -> None:
        # Before the pointer moves: a registry that lacks the model must not leave the tables
        # switched and the champion not.
        version = champion_of(target)
        if version is None:
            return
        run_id = target.get("model_run_id")  # versions published before it was recorded: the number alone
        if not Path(settings.data_root).is_dir() or not Tracker(settings).has_version(version, run_id):
            raise RollbackRefused(
                f"model {target['model_version']} is not in the MLflow store of {settings.data_root}: pass the "
                "--data-root of the run that published it, or --keep-champion to move the tables alone"
            )

    before, restored = pub.rollback(store, args.to, check=model_is_registered)
    print(f"latest: {before['version']} -> {restored['version']} (model {restored['model_version']})")
    version = champion_of(restored)
    if version is not None:
        Tracker(settings).set_alias(CHAMPION, version)
        print(f"MLflow alias '{CHAMPION}' -> {restored['model_version']}")


def _natural(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def cmd_movielens(args: argparse.Namespace) -> None:
    from recsys_lib.data import movielens

    dest = _dest_folder(args)
    folder = _source_folder(args) or movielens.download(args.release, dest)
    interactions, items = movielens.load(folder)
    _write_frames(
        dest, args.format, interactions=interactions, items=items, users=movielens.load_users(folder)
    )
    print(f"MovieLens from {folder} in the input contract")


def cmd_atomic(args: argparse.Namespace) -> None:
    from recsys_lib.data import atomic

    dest = _dest_folder(args)
    interactions, items, users = atomic.load(_source_folder(args))
    _write_frames(dest, args.format, interactions=interactions, items=items, users=users)
    print(f"RecBole atomic dataset from {args.source} in the input contract")


def cmd_synthetic(args: argparse.Namespace) -> None:
    from recsys_lib.data import synthetic

    dest = _dest_folder(args)
    data = synthetic.generate_dataset(
        n_users=args.users,
        n_items=args.items,
        interactions_per_user=args.per_user,
        seed=args.seed,
        new_users=args.new_users,
    )
    _write_frames(dest, args.format, interactions=data.interactions, items=data.items, users=data.users)
    print(f"Latest event on {synthetic.last_day(data.interactions)} (use it as --ds)")


def _source_folder(args: argparse.Namespace) -> Path | None:
    """``--source`` as an existing folder (None when not given)."""
    if not args.source:
        return None
    folder = Path(args.source).expanduser()
    if not folder.is_dir():
        raise SystemExit(f"recsys {args.command}: --source {args.source}: "
                         f"{'a file, not a folder' if folder.exists() else 'no such folder'}")  # fmt: skip
    return folder


def _dest_folder(args: argparse.Namespace) -> Path:
    """``--dest`` as a local folder to write into (checked before any work)."""
    dest = Path(args.dest).expanduser()
    if not args.dest.strip() or "://" in args.dest or dest.is_file():
        raise SystemExit(f"recsys {args.command}: --dest {args.dest!r}: expected a local folder to write into")
    return dest


def _write_frames(dest: Path, fmt: str, **frames) -> None:
    """Contract frames as ``dest/<name>.<fmt>`` (None frames are skipped), listed on stdout."""
    from recsys_lib.data import to_bytes

    dest.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        if frame is None:
            continue
        (dest / f"{name}.{fmt}").write_bytes(to_bytes(frame, fmt))
        print(f"  {dest / f'{name}.{fmt}'}: {len(frame):,} rows")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description="Batch recommendation pipeline.")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of a user error too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the whole pipeline on your own files")
    p.add_argument("--interactions", required=True, help="CSV / Parquet / JSON-lines file")
    p.add_argument("--items", required=True, help="CSV / Parquet / JSON-lines file")
    p.add_argument("--users", help="optional: registered users, their segments and interests (same formats)")
    p.add_argument("--queries", help="optional: a search log (query, timestamp [, user_id] [, item_id clicked])")
    p.add_argument("--output", required=True, help="where to publish: a directory or s3://bucket/prefix")
    p.add_argument(
        "--ds",
        type=logical_date,
        default=dt.datetime.now(dt.timezone.utc).date().isoformat(),
        help="logical date (default: today, UTC); events after it are rejected",
    )
    p.add_argument("--config", help="settings TOML file (see recsys_lib/conf/base.toml)")
    p.add_argument("--data-root", help="work data and MLflow store (default: one per output under RECSYS_DATA_ROOT)")
    p.add_argument("--full-retrain", action="store_true", help="train from the pretrained encoder")
    _add_set(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("benchmark", help="the model and every baseline on one split of your files, one table")
    p.add_argument(
        "--protocol", choices=typing.get_args(Split), default="user_chrono",
        help="the split (features.split); random_item is the Microsoft Recommenders benchmark's",
    )  # fmt: skip
    p.add_argument("--holdout-fraction", type=_share, default=0.2, help="share held out (0.25 for random_item's 75/25)")
    p.add_argument("--interactions", required=True, help="CSV / Parquet / JSON-lines file")
    p.add_argument("--items", required=True, help="CSV / Parquet / JSON-lines file")
    p.add_argument("--users", help="optional: registered users, their segments and interests")
    p.add_argument("--ds", type=logical_date, required=True, help="logical date: the day of the latest event or later")
    p.add_argument("--config", help="settings TOML file")
    p.add_argument("--data-root", help="work data and MLflow store (default: a new folder under RECSYS_DATA_ROOT)")
    p.add_argument("--keep-cold-items", action="store_true", help="keep the cold-item protocol's share of items")
    p.add_argument("--baselines", help="comma-separated (evaluate.baselines), or 'all'")
    _add_set(p)
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("land-sample", help="stage the bundled MovieLens sample as a raw drop")
    p.add_argument("--ds", type=logical_date, required=True)
    p.add_argument("--source", help="another MovieLens folder (default: the bundled latest-small)")
    p.add_argument("--config")
    p.set_defaults(func=cmd_land_sample)

    p = sub.add_parser("show", help="print the published tables and a few users' recommendations")
    p.add_argument("--users", type=_count, default=3)
    p.add_argument("--user", action="append", help="a user id to show (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config")
    _add_location(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("search", help="the items a text query finds in the live version (optionally for a user)")
    p.add_argument("text", help="the query, e.g. \"space adventure with robots\"")
    p.add_argument("--user", help="personalise for this user id")
    p.add_argument("--k", type=_count, default=10, help="how many items")
    p.add_argument("--version", help="a published version instead of the live one")
    p.add_argument("--config")
    _add_location(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("session", help="the items for a history the nightly run has not seen, from the live vectors")
    p.add_argument("items", nargs="+", help="item ids the user just used, e.g. 318 296")
    p.add_argument("--k", type=_count, default=10, help="how many items")
    p.add_argument("--version", help="a published version instead of the live one")
    p.add_argument("--config")
    _add_location(p)
    p.set_defaults(func=cmd_session)

    p = sub.add_parser("versions", help="list the published versions")
    p.add_argument("--config")
    _add_location(p)
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("report", help="print where the run report (HTML) of the live or a given version is")
    p.add_argument("--version", help="a published version instead of the live one")
    p.add_argument("--config")
    _add_location(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("airflow", help="Airflow (UI, scheduler, ...) and the MLflow UI on this machine, until Ctrl-C")
    p.add_argument("--port", type=int, default=8080, help="Airflow's UI and REST API")
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--password", default="admin", help="the admin user's password")
    p.add_argument("--config")
    _add_location(p)
    p.set_defaults(func=cmd_airflow)

    p = sub.add_parser("cluster-local", help="the cluster profile's stack (Celery, Postgres, Redis, Spark standalone, "
                       "S3, MLflow) on this machine, until Ctrl-C")  # fmt: skip
    p.add_argument("--port", type=int, default=8080, help="Airflow's UI and REST API")
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--password", default="admin", help="the admin user's password")
    p.add_argument("--ds", default="2016-10-17", help="lands the bundled sample as this day's drop if it has none")
    p.add_argument("--trigger", action="store_true", help="trigger recsys_nightly for --ds and wait for it")
    p.add_argument("--config", help="a settings file for every task (RECSYS_CONFIG)")
    p.add_argument("--data-root", help="state goes under <data root>/cluster (default: $RECSYS_DATA_ROOT or ./var)")
    p.set_defaults(func=cmd_cluster_local)

    p = sub.add_parser("rollback", help="make an earlier published version live again")
    p.add_argument("--to", help="version id (default: the one published before the live one)")
    p.add_argument("--keep-champion", action="store_true", help="leave the MLflow champion alias where it is")
    p.add_argument("--config")
    _add_location(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("movielens", help="MovieLens as files in the input contract (downloads a release)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--release", help="download this release first (needs internet): 100k, 1m, 10m, 20m, 25m, ...")
    source.add_argument("--source", help="an unpacked MovieLens folder, e.g. data/movielens-latest-small")
    p.add_argument("--dest", required=True)
    p.add_argument("--format", choices=("csv", "parquet", "jsonl"), default="parquet")
    p.set_defaults(func=cmd_movielens)

    p = sub.add_parser("atomic", help="RecBole atomic files (.inter, .item, .user) as files in the input contract")
    p.add_argument("--source", required=True, help="a folder with <name>.inter and <name>.item")
    p.add_argument("--dest", required=True)
    p.add_argument("--format", choices=("csv", "parquet", "jsonl"), default="parquet")
    p.set_defaults(func=cmd_atomic)

    p = sub.add_parser("synthetic", help="write a seeded synthetic dataset in the input contract")
    p.add_argument("--users", type=_count, default=2000)
    p.add_argument("--items", type=_count, default=1000)
    p.add_argument("--per-user", type=_positive, default=20.0, help="mean interactions per user")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--new-users", type=_count_or_zero, default=0,
                   help="registered users without interactions (users file)")  # fmt: skip
    p.add_argument("--format", choices=("csv", "parquet", "jsonl"), default="parquet")
    p.add_argument("--dest", required=True)
    p.set_defaults(func=cmd_synthetic)
    for command in sub.choices.values():  # --verbose after the command, too
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from recsys_lib.logs import quiet_library_logs

    quiet_library_logs()
    from botocore.exceptions import BotoCoreError, ClientError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (NotRetryable, BotoCoreError, ClientError) as e:
        # An S3 store that cannot be reached (no credentials, no server) is the user's to fix,
        # too; the jobs that Airflow runs keep such errors retryable.
        if args.verbose:
            raise
        message = str(e)
        for uri, path in getattr(args, "landed", {}).items():
            message = message.replace(uri, path)
        if isinstance(e, NothingPublished) and not (getattr(args, "output", None) or getattr(args, "data_root", None)):
            message += " (name another with --output or --data-root, or set RECSYS_DATA_ROOT)"
        raise SystemExit(f"recsys {args.command}: {message}") from None
    except KeyboardInterrupt:
        if args.verbose:
            raise
        raise SystemExit(f"recsys {args.command}: interrupted (--verbose shows where)") from None


if __name__ == "__main__":
    sys.exit(main())

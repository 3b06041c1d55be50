"""Publish: check the staged tables, apply the quality gate, write a new version atomically.

Checks (``recsys_lib.checks``): the output contract, then coverage and overlap against the live
version. Gate (``recsys_lib.gate``): the candidate's NDCG at the primary cut-off must not fall
more than ``publish.max_ndcg_drop`` below the champion's, both from the evaluate stage's typed
report on today's split; ``publish.force`` overrides it (recorded in the manifest). On success
the MLflow alias ``champion`` moves to the candidate. On failure nothing changes and
PublishRefused says why. Either way the run report (``recsys_lib.run_report``) goes to the
model's MLflow run and beside the staged outputs; a published version lists it as an artefact.
"""

from __future__ import annotations

import logging
from typing import Any

from recsys_lib.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    import json

    import pandas as pd

    from recsys_lib import publish as pub
    from recsys_lib.checks import check_tables
    from recsys_lib.errors import MissingInput, PublishRefused
    from recsys_lib.evaluation.report import CHAMPION as CHAMPION_ROW
    from recsys_lib.gate import NO_CHAMPION, GateDecision, decide
    from recsys_lib.reader import PublishedTables
    from recsys_lib.rules import read_rules
    from recsys_lib.run_report import REPORT_FILE, RUN_REPORT
    from recsys_lib.schema import ITEM_COL, QUERY_COL, QUERY_CONFIG, SEEN_COL, USER_COL
    from recsys_lib.storage import FeatureTable, OutputTable, Storage
    from recsys_lib.tracking import CHAMPION, Tracker, code_version

    storage, tracker = Storage(settings), Tracker(settings)
    mv = tracker.resolve(model_version)
    cfg = settings.publish
    tables = {name: storage.read_output_table(name, ds) for name in OutputTable}
    catalogue = storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds, columns=[ITEM_COL])[ITEM_COL]
    active = catalogue[~read_rules(settings.rules, storage, ds, pd.Index(catalogue)).blocked]
    histories = storage.read_features(FeatureTable.USER_HISTORIES, ds, columns=[USER_COL, SEEN_COL])
    live = pub.read_latest(storage.published)
    if live is not None and live.get("model_run_id") and not tracker.has_run(live["model_run_id"]) and not cfg.force:
        # Its champion is in another store: the gate would compare tonight's model with nothing.
        raise PublishRefused(
            f"the live version {live['version']} at {storage.published.uri('')} was published from another MLflow "
            f"store (its model's run {live['model_run_id']} is not in {settings.tracking.tracking_uri}): run with "
            "the data root that published it, or set publish.force to replace it ungated"
        )
    previous = None if live is None else PublishedTables(storage.published).table(OutputTable.USER_TOPN).to_pandas()
    queries = storage.read_features(FeatureTable.TOP_QUERIES, ds, columns=[QUERY_COL])[QUERY_COL].tolist()
    failures = check_tables(tables, histories, active, previous, cfg, queries)
    if failures:
        raise PublishRefused("checks failed, the live tables are unchanged:\n  " + "\n  ".join(failures))

    report = _evaluation_of(storage, ds, mv)
    champion = tracker.alias(CHAMPION)
    if champion is None or champion.version == mv.version:  # the first model, or republishing the champion
        champion, decision = None, GateDecision(None, NO_CHAMPION)
    elif report is None:
        raise MissingInput(f"no evaluation of {mv.label} for {ds}, and the gate needs one: run evaluate first")
    elif report.champion_split:
        # Its numbers, re-measured or recorded, are on another split and may include tonight's holdout.
        decision = GateDecision(None, f"the champion trained on the {report.champion_split} split, tonight's is "
                                      f"{report.split}: nothing comparable to gate against")  # fmt: skip
    else:
        recorded = None if report.model_metrics(CHAMPION_ROW) else tracker.evaluation_of(champion.run_id)
        decision = decide(report, recorded, cfg.max_ndcg_drop)
    forced = not decision.passed and cfg.force
    verdict = "passed" if decision.passed else "forced past" if forced else "refused"
    gate = f"{verdict} ({decision.basis})" if decision.passed else f"{verdict}: {decision.refusal}"
    report_html = _run_report(storage, tracker, ds, mv, gate, champion)
    if not decision.passed and not forced:
        raise PublishRefused(
            f"quality gate: {decision.refusal}; {champion.label} stays champion and its tables stay live"
        )
    if forced:
        log.warning("quality gate failed but publish.force is set: %s", decision.refusal)

    encoder_files = storage.read_output_files(Storage.QUERY_ENCODER, ds)
    metadata = {
        "model_run_id": mv.run_id,  # version numbers restart in each MLflow store, run ids do not
        "evaluation": report.to_dict() if report else None,
        # Readers that build a user from item vectors score it as user_topn does: cosine / T + bias.
        "temperature": json.loads(encoder_files[QUERY_CONFIG]).get("temperature"),
        "index": storage.read_index_manifest(ds, mv.version),
        "ranking": _ranking(settings, tracker, mv),
        "forced": forced,
        "gate": decision.refusal or "passed",
        "gate_basis": decision.basis,
        "code_version": code_version(),
        "champion_before": champion.label if champion else None,
    }
    # A backfill (ds older than the live version's) is kept as a version, not made live, unless
    # publish.backfill (or force) says so: last night's tables and champion stay.
    backfill = live is not None and ds < live["ds"]
    make_live = not backfill or cfg.backfill or cfg.force
    artefacts = {Storage.QUERY_ENCODER: encoder_files}
    if report_html is not None:
        artefacts[RUN_REPORT] = {REPORT_FILE: report_html}
    manifest = pub.publish_version(storage.published, ds, tables, mv.label, metadata, make_live=make_live,
                                   artefacts=artefacts)  # fmt: skip
    if make_live:
        tracker.set_alias(CHAMPION, mv.version)
    else:
        log.warning("%s is older than the live version's ds %s: published %s without making it live "
                    "(set backfill to replace the live tables; `recsys rollback --to` can switch later)",
                    ds, live["ds"], manifest["version"])  # fmt: skip
    pruned = pub.prune_versions(storage.published, cfg.keep_versions)
    if pruned:
        log.info("removed %d old published versions: %s", len(pruned), ", ".join(pruned))
    pruned = storage.prune_work(ds, cfg.keep_work_days)
    if pruned:
        log.info("removed the work store's %d folders older than %d days: %s", len(pruned), cfg.keep_work_days,
                 ", ".join(pruned))  # fmt: skip
    tracker.set_tags(mv.run_id, {"published_version": manifest["version"]})
    location = storage.published.uri(Storage.published_version(manifest["version"]))
    log.info("published %s at %s", manifest["version"], location)
    return {
        "ds": ds,
        "version": manifest["version"],
        "location": location,
        "model_version": mv.version,
        "forced": forced,
        "live": make_live,
        "latest": storage.published.uri(Storage.LATEST),
    }


def _run_report(storage, tracker, ds: str, mv, gate: str, champion) -> bytes | None:
    """The run's HTML report (recsys_lib/run_report.py), written beside the staged outputs and
    logged to the model's MLflow run; None, with the reason logged, if it could not be made: a
    report is for people and never holds back a publish."""
    from recsys_lib.run_report import REPORT_FILE, gather, render

    try:
        page = render(gather(storage, tracker, ds, mv, gate, champion.label if champion else None))
    except Exception:  # noqa: BLE001 (any failure: the tables still publish, the log says why)
        log.exception("could not build the run report of %s; publishing without it", ds)
        return None
    storage.work.write_bytes(storage.run_output(REPORT_FILE, ds), page.encode())
    tracker.client.log_text(mv.run_id, page, REPORT_FILE)
    log.info("run report: %s (and artifact %s of MLflow run %s)", storage.output_uri(REPORT_FILE, ds), REPORT_FILE,
             mv.run_id)  # fmt: skip
    return page.encode()


def _ranking(settings: Settings, tracker, mv) -> str:
    """How the user top-N was ordered: what its scores are (the manifest says it to readers)."""
    ranker = tracker.load_ranker(mv) if settings.rank.enabled else None
    return "retrieval+ranker" if ranker is not None and ranker.use else "retrieval"


def _evaluation_of(storage, ds: str, mv):
    """The evaluate stage's report of this candidate for ds, or None (not run, or of another model)."""
    from recsys_lib.errors import MissingInput

    try:
        report = storage.read_evaluation(ds)
    except MissingInput:
        return None
    return report if report.model_version == mv.label else None


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

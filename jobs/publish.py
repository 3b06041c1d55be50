"""Publish: check the staged tables, apply the quality gate, write a new version atomically.

Gate: the candidate's holdout NDCG@10 must not fall more than ``publish.max_ndcg_drop`` below the
champion's, both measured on today's split (the evaluate stage re-runs the champion);
``publish.force`` overrides it (recorded in the manifest). On success the MLflow
alias ``champion`` moves to the candidate. On failure nothing changes and PublishRefused says why.
"""

from __future__ import annotations

import logging
from typing import Any

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage

log = logging.getLogger(__name__)
GATE_METRIC = "ndcg_at_10"
GATE_REPORT = ("ndcg_at_10", "recall_at_10", "recall_at_20", "map_at_10", "coverage_at_10")


def quality_gate(candidate: dict[str, float], champion: dict[str, float] | None, max_drop: float) -> str | None:
    """None when the candidate may replace the champion, else the reason it may not.

    Both dicts hold the same metric names (``ndcg_at_10``, ``recall_at_20``, ...) measured on the
    same split; the reason quotes both sets.
    """
    if champion is None or GATE_METRIC not in champion:
        return None
    if GATE_METRIC not in candidate:
        return f"the candidate has no {GATE_METRIC}: run evaluate first"
    floor = champion[GATE_METRIC] * (1 - max_drop)
    if candidate[GATE_METRIC] >= floor:
        return None
    shown = [m for m in GATE_REPORT if m in candidate and m in champion]
    numbers = "; ".join(f"{m}: candidate {candidate[m]:.4f}, champion {champion[m]:.4f}" for m in shown)
    return f"{GATE_METRIC} is below the champion's minus the allowed {max_drop:.0%} ({floor:.4f}). {numbers}"


def gate_metrics(candidate_run: dict[str, float], champion_run: dict[str, float] | None):
    """(candidate, champion, basis): both sides' metrics for the gate, on the same split when the
    evaluate stage re-ran the champion (``champion.*`` in the candidate's run), else the
    champion's own recorded holdout metrics."""
    candidate = {
        k.removeprefix("model."): v for k, v in candidate_run.items() if k.count(".") == 1 and k.startswith("model.")
    }
    same_split = {
        k.removeprefix("champion."): v
        for k, v in candidate_run.items()
        if k.count(".") == 1 and k.startswith("champion.")
    }
    if same_split:
        return candidate, same_split, "same split"
    if champion_run is None:
        return candidate, None, "no champion"
    recorded = {
        k.removeprefix("model."): v for k, v in champion_run.items() if k.count(".") == 1 and k.startswith("model.")
    }
    return candidate, recorded, "champion's recorded metrics (could not re-evaluate it)"


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    import pandas as pd

    from jobs._common import business_rules, open_stage, read_features
    from recsys_lib import publish as pub
    from recsys_lib.errors import PublishRefused
    from recsys_lib.reader import PublishedTables
    from recsys_lib.schema import ITEM_COL, SEEN_COL, USER_COL
    from recsys_lib.tracking import CHAMPION, code_version

    storage, tracker, mv = open_stage(settings, model_version)
    tables = {name: storage.work.read_table(Storage.run_output(name, ds)) for name in pub.TABLES}
    catalogue = read_features(storage, "item_documents", ds, columns=[ITEM_COL])[ITEM_COL]
    # Active items: the catalogue less what business rules block.
    blocked = business_rules(settings, storage, ds, pd.Index(catalogue)).blocked
    catalogue = catalogue[~blocked]
    histories = read_features(storage, "user_histories", ds, columns=[USER_COL, SEEN_COL])
    failures = [
        f"user_topn: {f}"
        for f in pub.check_user_topn(
            tables["user_topn"].to_pandas(), histories, set(catalogue), tables["user_topn"].schema
        )
    ]
    failures += [
        f"item_similar: {f}"
        for f in pub.check_item_similar(
            tables["item_similar"].to_pandas(), set(catalogue), tables["item_similar"].schema
        )
    ]
    live = pub.read_latest(storage.published)
    previous = None
    if live is not None:
        previous = PublishedTables(storage.published).table("user_topn", live["version"]).to_pandas()
    cfg = settings.publish
    failures += [
        f"user_topn: {f}"
        for f in pub.check_against_previous(
            tables["user_topn"].to_pandas(),
            previous,
            len(catalogue),
            cfg.min_coverage,
            cfg.max_coverage_drop,
            cfg.min_overlap,
        )
    ]
    if failures:
        raise PublishRefused("checks failed, the live tables are unchanged:\n  " + "\n  ".join(failures))

    candidate_metrics = tracker.run_metrics(mv.run_id)
    champion = tracker.alias(CHAMPION)
    if champion is not None and champion.version == mv.version:
        champion = None  # republishing the champion's own tables
    candidate, incumbent, basis = gate_metrics(
        candidate_metrics, tracker.run_metrics(champion.run_id) if champion else None
    )
    refusal = quality_gate(candidate, incumbent if champion else None, settings.publish.max_ndcg_drop)
    forced = refusal is not None and settings.publish.force
    if refusal is not None and not forced:
        raise PublishRefused(f"quality gate: {refusal}; {champion.label} stays champion and its tables stay live")
    if forced:
        log.warning("quality gate failed but publish.force is set: %s", refusal)

    metrics = {
        k: v
        for k, v in candidate_metrics.items()
        if k.startswith(("model.", "champion.", "popularity.", "item_knn.", "als.", "cold.", "index."))
    }
    manifest = pub.publish_version(
        storage.published,
        ds,
        tables,
        mv.label,
        {
            "metrics": metrics,
            "forced": forced,
            "gate": refusal or "passed",
            "gate_basis": basis,
            "code_version": code_version(),
            "champion_before": champion.label if champion else None,
        },
    )
    tracker.set_alias(CHAMPION, mv.version)
    pruned = pub.prune_versions(storage.published, settings.publish.keep_versions)
    if pruned:
        log.info("removed %d old published versions: %s", len(pruned), ", ".join(pruned))
    tracker.set_tags(mv.run_id, {"published_version": manifest["version"]})
    location = storage.published.uri(pub.version_prefix(manifest["version"]))
    log.info("published %s at %s", manifest["version"], location)
    return {
        "ds": ds,
        "version": manifest["version"],
        "location": location,
        "model_version": mv.version,
        "forced": forced,
        "latest": storage.published.uri(pub.LATEST_KEY),
    }


def main(argv: list[str] | None = None) -> None:
    from jobs._cli import run_job

    run_job(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()

"""Publish: check the staged tables, apply the quality gate, write a new version atomically.

Gate: the candidate's holdout NDCG must not fall more than ``publish.max_ndcg_drop`` below the
champion's; ``publish.force`` overrides it (recorded in the manifest). On success the MLflow
alias ``champion`` moves to the candidate. On failure nothing changes and PublishRefused says why.
"""

from __future__ import annotations

import logging
from typing import Any

from recsys_lib.settings import Settings
from recsys_lib.storage import Storage

log = logging.getLogger(__name__)
GATE_METRIC = "model.ndcg_at_10"


def quality_gate(candidate: dict[str, float], champion: dict[str, float] | None, max_drop: float) -> str | None:
    """None when the candidate may replace the champion, else the reason it may not."""
    if champion is None or GATE_METRIC not in champion:
        return None
    if GATE_METRIC not in candidate:
        return f"the candidate has no {GATE_METRIC}: run evaluate first"
    floor = champion[GATE_METRIC] * (1 - max_drop)
    if candidate[GATE_METRIC] < floor:
        return (
            f"{GATE_METRIC} {candidate[GATE_METRIC]:.4f} is below the champion's "
            f"{champion[GATE_METRIC]:.4f} minus the allowed {max_drop:.0%} ({floor:.4f})"
        )
    return None


def run(settings: Settings, ds: str, model_version: str | None = None) -> dict[str, Any]:
    from jobs._common import open_stage, read_features
    from recsys_lib import publish as pub
    from recsys_lib.errors import PublishRefused
    from recsys_lib.schema import ITEM_COL, SEEN_COL, USER_COL
    from recsys_lib.tracking import CHAMPION, code_version

    storage, tracker, mv = open_stage(settings, model_version)
    tables = {name: storage.work.read_table(Storage.run_output(name, ds)) for name in pub.TABLES}
    catalogue = read_features(storage, "item_documents", ds, columns=[ITEM_COL])[ITEM_COL]
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
    if failures:
        raise PublishRefused("checks failed, the live tables are unchanged:\n  " + "\n  ".join(failures))

    candidate_metrics = tracker.run_metrics(mv.run_id)
    champion = tracker.alias(CHAMPION)
    champion_metrics = None
    if champion is not None and champion.version != mv.version:
        champion_metrics = tracker.run_metrics(champion.run_id)
    refusal = quality_gate(candidate_metrics, champion_metrics, settings.publish.max_ndcg_drop)
    forced = refusal is not None and settings.publish.force
    if refusal is not None and not forced:
        raise PublishRefused(f"quality gate: {refusal}; {champion.label} stays champion and its tables stay live")
    if forced:
        log.warning("quality gate failed but publish.force is set: %s", refusal)

    metrics = {k: v for k, v in candidate_metrics.items() if k.startswith(("model.", "popularity.", "index."))}
    manifest = pub.publish_version(
        storage.published,
        ds,
        tables,
        mv.label,
        {
            "metrics": metrics,
            "forced": forced,
            "gate": refusal or "passed",
            "code_version": code_version(),
            "champion_before": champion.label if champion else None,
        },
    )
    tracker.set_alias(CHAMPION, mv.version)
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

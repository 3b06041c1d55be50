"""The whole nightly DAG through Airflow itself (`airflow dags test`, SQLite metadata), on a
tiny synthetic dataset and a tiny random encoder, with real Spark, MLflow and FAISS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs.pipeline import STAGES
from recsys_lib.data import land_raw_drop, synthetic
from recsys_lib.evaluation.report import EvaluationReport
from recsys_lib.reader import PublishedTables
from recsys_lib.schema import ITEM_COL, SEEN_COL, USER_COL, USER_TOPN_SCHEMA
from recsys_lib.storage import FeatureTable, Storage
from recsys_lib.tracking import CHAMPION, Tracker
from tests.conftest import TINY_TRAIN, make_settings, settings_toml

pytestmark = [pytest.mark.slow, pytest.mark.spark]
ROOT = Path(__file__).resolve().parents[2]


def airflow(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("airflow"))
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def nightly(tmp_path_factory, tiny_encoder):
    """Land a synthetic drop, run the DAG twice for the same ds; yields what the test needs."""
    base = tmp_path_factory.mktemp("nightly")
    # Segments of about five users: a small minimum so that they get a fallback of their own; and
    # a ranker from the 17 validation events tiny data has.
    overrides = {"model.encoder": str(tiny_encoder), "rules.min_segment_users": 2, "rank.min_users": 5}
    config = base / "settings.toml"
    config.write_text(settings_toml({**TINY_TRAIN, **overrides}))
    settings = make_settings(base / "data", **overrides)
    # 60 users with interactions and 4 registered ones without any (cold users).
    data = synthetic.generate_dataset(n_users=60, n_items=50, interactions_per_user=8, seed=11, new_users=4)
    interactions = data.interactions
    ds = synthetic.last_day(interactions)
    land_raw_drop(Storage(settings), ds, interactions, data.items, users=data.users)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(base / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "RECSYS_DATA_ROOT": str(base / "data"),
        "RECSYS_CONFIG": str(config),
    }
    migrate = airflow(["db", "migrate"], env)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    runs = [airflow(["dags", "test", "recsys_nightly", ds], env) for _ in range(2)]
    live = PublishedTables.from_settings(settings).manifest()["version"]
    # A retrain held to a gate no model can pass (it must beat the champion's NDCG elevenfold):
    # the publish is refused through the real pipeline, after evaluate re-ran the champion.
    strict = {**env, "RECSYS__PUBLISH__MAX_NDCG_DROP": "-10"}
    conf = json.dumps({"full_retrain": True, "max_train_steps": 3})
    refused = airflow(["dags", "test", "recsys_nightly", ds, "-c", conf], strict)
    return {
        "settings": settings,
        "config": str(config),
        "ds": ds,
        "runs": runs,
        "interactions": interactions,
        "users": data.users,
        "refused": refused,
        "live_before_refusal": live,
    }


def test_every_task_ran_and_succeeded(nightly):
    for run in nightly["runs"]:
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-5000:]
        for stage in STAGES:
            assert f"[DAG TEST] end task task_id={stage}" in log, f"{stage} did not run"
        assert "state=success" in log


def test_published_user_topn_honours_the_contract(nightly):
    settings, ds = nightly["settings"], nightly["ds"]
    tables = PublishedTables.from_settings(settings)
    manifest = tables.manifest()
    assert manifest["ds"] == ds and manifest["tables"]["user_topn"]["rows"] > 0
    topn = tables.table("user_topn")
    assert topn.schema.equals(USER_TOPN_SCHEMA)
    df = topn.to_pandas()
    # One row per (user, rank); ranks run 1..N with N = top_n for every user here (50 items).
    assert not df.duplicated([USER_COL, "rank"]).any()
    assert (df.groupby(USER_COL)["rank"].apply(lambda r: sorted(r) == list(range(1, 6)))).all()
    # No item the user has already interacted with (the raw input is the ground truth here).
    raw = nightly["interactions"]
    seen = set(zip(raw[USER_COL], raw[ITEM_COL]))
    assert not any((u, i) in seen for u, i in zip(df[USER_COL], df[ITEM_COL]))
    # Every user is covered: those with history and the registered ones without.
    assert set(df[USER_COL]) == set(raw[USER_COL]) | set(nightly["users"][USER_COL])
    assert np.isfinite(df["score"]).all() and (df["ds"] == ds).all()
    assert set(df["model_version"]) == {manifest["model_version"]}


def test_cold_users_get_their_segments_popular_items(nightly):
    raw, users = nightly["interactions"], nightly["users"]
    cold = users[~users[USER_COL].isin(raw[USER_COL])]
    assert len(cold) == 4
    segment_of = dict(zip(users[USER_COL], users["segment"]))
    tables = PublishedTables.from_settings(nightly["settings"])
    for user, segment in zip(cold[USER_COL], cold["segment"]):
        members = raw[raw[USER_COL].map(segment_of) == segment]
        counts = members.groupby(ITEM_COL)[USER_COL].nunique()
        recs = tables.recommendations_for(user)
        assert recs["rank"].tolist() == [1, 2, 3, 4, 5] and recs["reason_item_id"].isna().all()
        # The segment's most popular items, best first (ties may resolve either way).
        got = [int(counts.get(item, 0)) for item in recs[ITEM_COL]]
        assert got == sorted(counts.tolist(), reverse=True)[:5], (user, segment)


def test_published_item_to_item_table(nightly):
    df = PublishedTables.from_settings(nightly["settings"]).table("item_similar").to_pandas()
    assert df["item_id"].nunique() == 50
    assert (df["item_id"] != df["similar_item_id"]).all()
    assert (df.groupby("item_id")["rank"].max() == 4).all()


def test_published_vectors_score_exactly_as_the_lists(nightly):
    """A service that retrieves online from item_vectors and user_vectors ranks as the tables do."""
    tables = PublishedTables.from_settings(nightly["settings"])
    assert {"item_vectors", "user_vectors"} <= set(tables.manifest()["tables"])
    items = tables.table("item_vectors").to_pandas().set_index(ITEM_COL)
    users = tables.table("user_vectors").to_pandas().set_index(USER_COL)
    assert len(items) == 50 and set(users.index) == set(nightly["interactions"][USER_COL])  # not the 4 new users
    similar = tables.table("item_similar").to_pandas().head(20)
    for row in similar.itertuples():  # item-to-item scores are cosines of the item vectors
        cosine = np.dot(items.loc[row.item_id, "vector"], items.loc[row.similar_item_id, "vector"])
        assert cosine == pytest.approx(row.score, rel=1e-4, abs=1e-5)
    topn = tables.table("user_topn").to_pandas()
    rows = topn[topn[USER_COL].isin(users.index)].head(20)
    scores = [np.dot(users.loc[r.user_id, "vector"], items.loc[r.item_id, "vector"]) + items.loc[r.item_id, "bias"]
              for r in rows.itertuples()]  # fmt: skip
    if tables.manifest()["ranking"] == "retrieval":  # else the ranker's scores are published
        assert scores == pytest.approx(rows["score"].tolist(), rel=1e-4, abs=1e-4)


def test_mlflow_holds_the_run_metrics_and_champion(nightly):
    settings = nightly["settings"]
    tracker = Tracker(settings)
    champion = tracker.alias(CHAMPION)
    assert champion is not None and champion.tags["ds"] == nightly["ds"]
    metrics = tracker.run_metrics(champion.run_id)
    for name in (
        "model.recall_at_10",
        "model.ndcg_at_10",
        "model.coverage_at_10",
        "popularity.recall_at_10",
        "popularity.ndcg_at_10",
        "item_knn.ndcg_at_10",
        "ease.ndcg_at_10",
        "implicit_als.recall_at_20",
        "model.map_at_10",
        "model.precision_at_10",
        "model.light.ndcg_at_10",
        "index.recall_at_10",
        "train_loss",
    ):
        assert name in metrics, name
    assert metrics["index.recall_at_10"] == 1.0  # a flat index is exact
    assert 0 <= metrics["model.ndcg_at_10"] <= 1
    # The live manifest carries the same evaluation, typed, and the index it was served from.
    manifest = PublishedTables.from_settings(settings).manifest()
    report = EvaluationReport.from_dict(manifest["evaluation"])
    assert report.model_version == champion.label and report.ks == (10, 20)
    assert report.model_metrics()["ndcg_at_10"] == pytest.approx(metrics["model.ndcg_at_10"])
    assert manifest["index"]["kind"] == "flat" and manifest["gate_basis"] == "no champion"
    # The ranker learned from the validation events; the table shows the path the model does not
    # serve beside the one it does, and the manifest says which ordered the lists.
    used = metrics["ranker.used"] == 1.0
    assert ("retrieval_only" if used else "with_ranker") in report.all_users.rankers
    assert manifest["ranking"] == ("retrieval+ranker" if used else "retrieval")


def test_the_served_model_learned_every_item_with_interactions(nightly):
    """The evaluation model never saw the holdout nor the cold-evaluation items; the served one
    (the registered version) has an ID for every item anyone interacted with up to ds."""
    tracker = Tracker(nightly["settings"])
    champion = tracker.alias(CHAMPION)
    served, _ = tracker.load_model(champion)
    evaluated, _ = tracker.load_model(champion, evaluation=True)
    used = set(nightly["interactions"][ITEM_COL])
    assert set(served.id_vocab) == used and set(evaluated.id_vocab) < used
    assert served.encoder_fingerprint() == evaluated.encoder_fingerprint()


def test_the_champion_loads_as_an_mlflow_pyfunc(nightly):
    """What an MLflow user does with the registered version: load it by URI, pass histories."""
    import mlflow

    settings = nightly["settings"]
    champion = Tracker(settings).alias(CHAMPION)
    model = mlflow.pyfunc.load_model(f"models:/{champion.name}@{CHAMPION}")
    events = nightly["interactions"]
    histories = [list(g) for _, g in events.groupby(USER_COL)[ITEM_COL]][:5]
    out = model.predict(pd.DataFrame({"history": histories}), params={"k": 7})
    catalogue = set(PublishedTables.from_settings(settings).table("item_vectors").to_pandas()[ITEM_COL])
    for history, ids, scores in zip(histories, out["item_ids"], out["scores"]):
        assert len(ids) == 7 and set(ids) <= catalogue and not set(ids) & set(history)
        assert list(scores) == sorted(scores, reverse=True)


def test_the_run_report_is_published_logged_and_found_by_the_cli(nightly):
    settings = nightly["settings"]
    manifest = PublishedTables.from_settings(settings).manifest()
    listed = manifest["artefacts"]["report"]["files"]
    assert [f["key"].rsplit("/", 1)[1] for f in listed] == ["report.html"]
    env = {**os.environ, "RECSYS_DATA_ROOT": str(settings.data_root), "RECSYS_CONFIG": nightly["config"]}
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "report"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    page = Path(done.stdout.strip()).read_text()
    for section in ("Quality gate", "candidate vs champion", "What was recommended", "Training", "Stages",
                    "<td>ingest</td>", "<td>recommend</td>", "Example users"):  # fmt: skip
        assert section in page, section
    assert page.count("data:image/png;base64,") >= 3
    run_id = Tracker(settings).alias(CHAMPION).run_id
    import mlflow

    assert "Quality gate" in mlflow.artifacts.load_text(f"runs:/{run_id}/report.html")


def test_rerunning_the_same_day_is_idempotent(nightly):
    settings = nightly["settings"]
    storage = Storage(settings)
    # The second run reused the trained model and republished identical tables.
    assert "reusing run" in nightly["runs"][1].stdout + nightly["runs"][1].stderr
    assert storage.published.list_dirs("versions") == [PublishedTables.from_settings(settings).manifest()["version"]]
    assert Tracker(settings).alias(CHAMPION).version == "1"
    histories = storage.read_features(FeatureTable.USER_HISTORIES, nightly["ds"])
    assert histories[USER_COL].is_unique and len(histories[SEEN_COL]) == 64
    lake = storage.partitions(Storage.lake("interactions"))
    assert lake == [nightly["ds"]]


def test_the_gate_refuses_a_worse_model_and_keeps_the_champions_tables(nightly):
    settings = nightly["settings"]
    log = nightly["refused"].stdout + nightly["refused"].stderr
    assert "state=failed" in log or nightly["refused"].returncode != 0
    assert "quality gate" in log
    assert "ndcg_at_10: candidate" in log and ", champion " in log  # both sets of numbers
    assert PublishedTables.from_settings(settings).manifest()["version"] == nightly["live_before_refusal"]
    tracker = Tracker(settings)
    assert tracker.alias(CHAMPION).version == "1"
    candidate = tracker.alias("candidate")
    assert candidate.version == "2"
    metrics = tracker.run_metrics(candidate.run_id)
    assert "champion.ndcg_at_10" in metrics  # the champion was measured on the candidate's split
    # The refused run's report says so, with both sets of numbers, in the candidate's MLflow run.
    import mlflow

    page = mlflow.artifacts.load_text(f"runs:/{candidate.run_id}/report.html")
    assert "class='refused'>refused" in page and "<td>champion</td>" in page

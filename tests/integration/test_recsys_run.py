"""``recsys run`` on files in the input contract (Parquet interactions, JSON-lines items, CSV
users), in a fresh process, publishing to a directory: the bring-your-own-data path end to end.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from jobs import cli
from recsys_lib.data import synthetic, to_bytes
from recsys_lib.reader import PublishedTables
from recsys_lib.schema import ITEM_COL, USER_COL
from recsys_lib.storage import LocalStore
from tests.conftest import TINY_TRAIN, settings_toml

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def test_recsys_run_publishes_tables_for_every_user(tmp_path, tiny_encoder, capsys):
    data = synthetic.generate_dataset(n_users=40, n_items=30, interactions_per_user=8, seed=5, new_users=2)
    interactions = data.interactions
    (tmp_path / "events.parquet").write_bytes(to_bytes(interactions, "parquet"))
    (tmp_path / "catalogue.jsonl").write_bytes(to_bytes(data.items, "jsonl"))
    (tmp_path / "users.csv").write_bytes(to_bytes(data.users, "csv"))
    # A search log: two searches for one title (one clicked), one for another, one unclicked.
    titles, ids = data.items["title"].tolist(), data.items["item_id"].tolist()
    searches = pd.DataFrame({
        "query": [titles[0], titles[0].upper(), titles[1], "nothing clicked"],
        "timestamp": [synthetic.last_day(interactions)] * 4, "user_id": ["x", "y", None, "z"],
        "item_id": [ids[0], None, ids[1], None],
    })  # fmt: skip
    (tmp_path / "searches.csv").write_bytes(to_bytes(searches, "csv"))
    config = tmp_path / "settings.toml"
    config.write_text(settings_toml({**TINY_TRAIN, "model.encoder": str(tiny_encoder)}))
    out = tmp_path / "published"
    command = [
        sys.executable, "-m", "jobs.cli", "run",
        "--interactions", str(tmp_path / "events.parquet"),
        "--items", str(tmp_path / "catalogue.jsonl"),
        "--users", str(tmp_path / "users.csv"),
        "--queries", str(tmp_path / "searches.csv"),
        "--output", str(out),
        "--ds", synthetic.last_day(interactions),
        "--config", str(config),
        "--data-root", str(tmp_path / "work"),
    ]  # fmt: skip
    env = {**os.environ, "RECSYS_DATA_ROOT": str(tmp_path / "unused")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Published version" in done.stdout
    tables = PublishedTables(LocalStore(str(out)))
    topn = tables.table("user_topn").to_pandas()
    assert set(topn[USER_COL]) == set(data.users[USER_COL])  # the two new users included
    assert set(interactions[USER_COL]) < set(data.users[USER_COL])
    assert tables.table("item_similar").num_rows > 0
    # The search log's frequent queries, normalised, most frequent first, answered as search does.
    searched = tables.table("query_topn").to_pandas()
    assert set(searched["query"]) == {titles[0].lower(), titles[1].lower(), "nothing clicked"}
    assert searched.groupby("query")["rank"].max().eq(5).all()  # recommend.top_n
    first = searched[searched["query"] == titles[0].lower()].sort_values("rank")
    assert first["item_id"].tolist() == tables.search(titles[0].lower(), k=5)["item_id"].tolist()
    assert set(tables.manifest()["tables"]) >= {"user_topn", "item_similar", "query_topn"}
    # The published query encoder is the one registered with the model in MLflow.
    (logged,) = (tmp_path / "work" / "mlflow").rglob("query_encoder/query.onnx")
    files = tables.manifest()["artefacts"]["query_encoder"]["files"]
    published = {f["key"].rsplit("/", 1)[1]: f["sha256"] for f in files}
    assert published["query.onnx"] == hashlib.sha256(logged.read_bytes()).hexdigest()
    assert not (tmp_path / "unused").exists()  # --data-root holds all work state
    # Search answers from the published version's own query encoder, as `recsys search` does.
    title = data.items["title"].iloc[0]
    found = tables.search(title, k=5, user_id=str(interactions[USER_COL].iloc[0]))
    assert len(found) == 5 and found["personalised"].all()
    assert set(found["item_id"]) <= set(data.items["item_id"])
    cli.main(["search", title, "--k", "3", "--output", str(out), "--data-root", str(tmp_path / "work"),
              "--config", str(config)])  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{title!r}, version ")
    assert [line.split()[0] for line in printed[1:]] == ["1.", "2.", "3."]
    # A session from the published vectors alone, at the temperature the user vectors carry (unit / T).
    user_vector = tables.table("user_vectors").column("vector")[0].as_py()
    assert tables.manifest()["temperature"] == pytest.approx(1 / np.linalg.norm(user_vector), rel=1e-4)
    used = interactions[ITEM_COL].astype(str).iloc[:3].tolist()
    session = tables.for_session(used, k=4)
    assert len(session) == 4 and not set(session["item_id"]) & set(used)
    cli.main(["session", *used, "--k", "2", "--output", str(out), "--data-root", str(tmp_path / "work"),
              "--config", str(config)])  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"after {', '.join(used)}, version ")
    assert [line.split()[1] for line in printed[1:]] == session["item_id"].tolist()[:2]
    # An id the version does not hold is named, not silently dropped; a user it lacks is said so.
    cli.main(["session", *used, "no-such-item", "--k", "2", "--output", str(out), "--data-root",
              str(tmp_path / "work"), "--config", str(config)])  # fmt: skip
    assert capsys.readouterr().out.splitlines()[0].startswith(
        f"after {', '.join(used)} (not in this version, left out: no-such-item), version "
    )
    cli.main(["show", "--user", "nobody", "--output", str(out), "--data-root", str(tmp_path / "work"),
              "--config", str(config)])  # fmt: skip
    assert capsys.readouterr().out.splitlines()[-1].startswith("User nobody: not in version ")

    # A refused run of the same ds (its events file has none: train has nothing to learn from)
    # changes nothing the next night or a reader sees: the drop, the lake and the features of ds
    # are as they were, though ingest and features ran before train refused.
    def derived() -> dict:
        work = tmp_path / "work"
        kept = [p for p in work.rglob("*") if p.is_file() and {"raw", "lake", "features"} & set(p.parts)]
        return {str(p.relative_to(work)): p.read_bytes() for p in kept if "mlflow" not in p.parts}

    before = derived()
    assert any("lake" in key for key in before) and any("features" in key for key in before)
    (tmp_path / "none.parquet").write_bytes(to_bytes(interactions.iloc[:0], "parquet"))
    command[command.index("--interactions") + 1] = str(tmp_path / "none.parquet")
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert refused.returncode != 0 and "nothing to train on" in refused.stderr, refused.stderr[-2000:]
    assert derived() == before

    # The same output with another data root's MLflow store (a mixed-up --data-root): its gate
    # would compare with nothing, so the publish is refused and the live version stays.
    live = tables.manifest()["version"]
    command[command.index("--interactions") + 1] = str(tmp_path / "events.parquet")
    command[command.index("--data-root") + 1] = str(tmp_path / "other")
    foreign = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert foreign.returncode != 0, foreign.stdout[-2000:]
    assert "was published from another MLflow store" in foreign.stderr.strip().splitlines()[-1], foreign.stderr[-2000:]
    assert PublishedTables(LocalStore(str(out))).manifest()["version"] == live


def test_recsys_benchmark_prints_one_table_on_the_random_item_split(tmp_path, tiny_encoder):
    data = synthetic.generate_dataset(n_users=40, n_items=30, interactions_per_user=8, seed=6)
    (tmp_path / "events.csv").write_bytes(to_bytes(data.interactions, "csv"))
    (tmp_path / "items.csv").write_bytes(to_bytes(data.items, "csv"))
    config = tmp_path / "settings.toml"
    config.write_text(settings_toml({**TINY_TRAIN, "model.encoder": str(tiny_encoder)}))
    command = [
        sys.executable, "-m", "jobs.cli", "benchmark", "--protocol", "random_item", "--holdout-fraction", "0.25",
        "--interactions", str(tmp_path / "events.csv"), "--items", str(tmp_path / "items.csv"),
        "--ds", synthetic.last_day(data.interactions), "--config", str(config),
    ]  # fmt: skip
    env = {**os.environ, "RECSYS_DATA_ROOT": str(tmp_path / "root")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout[done.stdout.index("random_item split, holdout 25%") :]
    all_users = table.split("\n\n")[1]
    rows = [line.split()[0] for line in all_users.splitlines()[1:]]
    assert rows == ["model", "popularity", "item_knn", "ease", "implicit_als"]
    assert "cold items (n=0, users=0): too few cold items" in table  # every item is in the protocol
    assert not (tmp_path / "root" / "published").exists()  # a benchmark publishes nothing

    # A holdout share too small to hold out one event is refused before training, in one line;
    # --data-root is where everything goes (nothing under RECSYS_DATA_ROOT).
    command[command.index("--holdout-fraction") + 1] = "0.001"
    env = {**os.environ, "RECSYS_DATA_ROOT": str(tmp_path / "root2")}
    refused = subprocess.run([*command, "--data-root", str(tmp_path / "bench2")], env=env, capture_output=True,
                             text=True, timeout=900)  # fmt: skip
    assert refused.returncode != 0, refused.stdout[-2000:]
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"recsys benchmark: the random_item split with --holdout-fraction 0.001 holds out none of the "
        f"{len(data.interactions)} events"
    ), refused.stderr[-2000:]
    assert not (tmp_path / "root2").exists() and (tmp_path / "bench2").is_dir()

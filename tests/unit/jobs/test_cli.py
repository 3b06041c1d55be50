"""The `recsys` command: versions and rollback on a real store and MLflow registry, and how a
user error reads."""

import os
import subprocess
import sys

import pytest

from jobs import cli
from recsys_lib import publish as pub
from recsys_lib.reader import PublishedTables
from recsys_lib.recommend import item_similar_table, user_topn_table
from recsys_lib.storage import Storage
from recsys_lib.tracking import CHAMPION, Tracker
from tests.conftest import ROOT, make_settings, settings_toml


def register(tracker, tmp_path, n):
    run_id = tracker.start_run(f"train {n}", {"ds": f"2026-01-0{n}"})
    (tmp_path / f"ckpt{n}").mkdir()
    (tmp_path / f"ckpt{n}" / "w").write_bytes(b"w")
    tracker.log_artifacts(run_id, tmp_path / f"ckpt{n}", "model")
    tracker.finish_run(run_id)
    return tracker.register_model(run_id, {})


def test_versions_and_rollback_move_the_pointer_and_the_champion(settings, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSYS_DATA_ROOT", settings.data_root)
    config = tmp_path / "s.toml"
    config.write_text(settings_toml({"model.encoder": settings.model.encoder}))
    tracker = Tracker(settings)
    store = Storage(settings).published
    manifests = []
    for n, item in ((1, "b"), (2, "c")):
        mv = register(tracker, tmp_path, n)
        ds = f"2026-01-0{n}"
        tables = {
            "user_topn": user_topn_table(["u1"], [1], [item], [0.5], mv.label, ds, ["a"]),
            "item_similar": item_similar_table(["a"], [1], [item], [0.5], mv.label, ds),
        }
        manifests.append(pub.publish_version(store, ds, tables, mv.label, {"model_run_id": mv.run_id}))
        tracker.set_alias(CHAMPION, mv.version)

    cli.main(["versions", "--config", str(config)])
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith(f"  {manifests[0]['version']}") and listed[1].startswith(f"* {manifests[1]['version']}")

    # Another data root's MLflow store lacks the model: refused before the pointer moves.
    elsewhere = ["--output", settings.storage.publish_root, "--data-root", str(tmp_path / "elsewhere")]
    with pytest.raises(SystemExit, match=r"^recsys rollback: model \S+/1 is not in the MLflow store of .*elsewhere: "):
        cli.main(["rollback", "--config", str(config), *elsewhere])
    assert PublishedTables(store).manifest()["version"] == manifests[1]["version"]
    assert not (tmp_path / "elsewhere").exists()

    cli.main(["rollback", "--config", str(config)])
    out = capsys.readouterr().out
    assert f"{manifests[1]['version']} -> {manifests[0]['version']}" in out
    assert PublishedTables(store).recommendations_for("u1")["item_id"].tolist() == ["b"]
    assert tracker.alias(CHAMPION).version == "1"

    with pytest.raises(SystemExit, match="^recsys rollback: .* is the oldest version kept: nothing to roll back to$"):
        cli.main(["rollback", "--config", str(config)])  # a user error: one line, no traceback

    # A version whose model has this store's version number but came from another store's run (a
    # --data-root mixed up): version numbers restart in each store, run ids do not.
    foreign = pub.publish_version(store, "2026-01-03", tables, "recsys_two_tower/2", {"model_run_id": "f" * 32})
    with pytest.raises(SystemExit, match=r"^recsys rollback: model recsys_two_tower/2 is not in the MLflow store of "):
        cli.main(["rollback", "--config", str(config), "--to", foreign["version"]])


def test_versions_address_a_run_output_and_an_empty_location_is_an_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "published"
    settings = make_settings(tmp_path / "data", **{"storage.publish_root": str(out)})
    mv = register(Tracker(settings), tmp_path, 1)
    tables = {
        "user_topn": user_topn_table(["u1"], [1], ["b"], [0.5], mv.label, "2026-01-01", ["a"]),
        "item_similar": item_similar_table(["a"], [1], ["b"], [0.5], mv.label, "2026-01-01"),
    }
    manifest = pub.publish_version(Storage(settings).published, "2026-01-01", tables, mv.label, {})

    cli.main(["versions", "--output", str(out), "--data-root", settings.data_root])
    assert capsys.readouterr().out.startswith(f"* {manifest['version']}")
    with pytest.raises(SystemExit, match=r"^recsys versions: no published versions at .*elsewhere$"):
        cli.main(["versions", "--output", str(tmp_path / "elsewhere"), "--data-root", settings.data_root])
    monkeypatch.setenv("RECSYS_DATA_ROOT", str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match=r"^recsys show: nothing published yet at .*\(name another with --output"):
        cli.main(["show"])


@pytest.mark.spark
def test_a_user_error_is_one_line_naming_your_file_and_the_traceback_waits_for_verbose(tmp_path):
    (tmp_path / "items.csv").write_bytes("item_id,title\ni1,Amélie\n".encode("latin-1"))
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\nu1,i1,1767225600\n")
    command = [sys.executable, "-m", "jobs.cli", "run", "--interactions", str(tmp_path / "events.csv"),
               "--items", str(tmp_path / "items.csv"), "--output", str(tmp_path / "out"),
               "--ds", "2026-01-02"]  # fmt: skip
    env = {**os.environ, "RECSYS_DATA_ROOT": str(tmp_path / "data")}
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert quiet.returncode == 1
    assert quiet.stdout == ""  # Spark's JVM log goes to stderr
    assert not list((tmp_path / "data").glob("projects/*/raw/*/*/*"))  # the failed run took its drop back
    assert "Traceback" not in quiet.stderr
    assert quiet.stderr.splitlines()[-1] == (
        f"recsys run: {tmp_path / 'items.csv'}: not valid utf-8 at byte 19 (invalid continuation byte); "
        "convert the file or set ingest.encoding to its encoding (e.g. latin-1)"
    )
    verbose = subprocess.run([*command, "--verbose"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr
    assert verbose.stderr.splitlines()[-1].startswith("recsys_lib.errors.SchemaError: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["synthetic", "--users", "-5", "--dest", "{tmp}/syn"], "--users: expected a whole number of at least 1"),
        (["synthetic", "--per-user", "0", "--dest", "{tmp}/syn"], "argument --per-user: expected a number above 0"),
        (["synthetic", "--dest", "s3://bucket/x"], "--dest 's3://bucket/x': expected a local folder"),
        (["movielens", "--source", "{tmp}/nowhere", "--dest", "{tmp}/ml"], "--source {tmp}/nowhere: no such folder"),
        (["movielens", "--source", "{tmp}/ratings-only", "--dest", "{tmp}/ml"], "ratings.csv without movies.csv"),
        (["atomic", "--source", "{tmp}/ratings-only", "--dest", "{tmp}/ml"], "no *.inter file"),
        (["land-sample", "--ds", "2026-01-01", "--source", "{tmp}/nowhere"], "--source {tmp}/nowhere: no such folder"),
        (["show", "--users", "-3"], "argument --users: expected a whole number of at least 1"),
        (["show", "--users", "²"], "argument --users: expected a whole number of at least 1"),  # a digit, not a number
        (["versions", "--output", ""], "recsys versions: --output is empty"),
        (["benchmark", "--protocol", "global_time", "--holdout-fraction", "1.5", "--interactions", "a.csv",
          "--items", "b.csv", "--ds", "2026-01-01"], "argument --holdout-fraction: expected a number between 0 and 1"),
        (["run", "--interactions", "{tmp}/ratings-only/events", "--items", "{tmp}/ratings-only/ratings.csv",
          "--output", "{tmp}/out", "--ds", "2026-01-01"], "events: the name must end in one of .csv"),
        (["run", "--interactions", "a.csv", "--items", "b.csv", "--output", "{tmp}/out", "--set", "nonsense"],
         "recsys run: --set expects section.key=value, got 'nonsense'"),
        (["benchmark", "--interactions", "a.csv", "--items", "b.csv", "--ds", "2026-01-01", "--set",
          "train.max_steps=-1"], "recsys benchmark: train.max_steps must be 0 or more, got -1"),
    ],
)
def test_bad_arguments_are_one_line_before_any_work(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("RECSYS_DATA_ROOT", str(tmp_path / "data"))
    (tmp_path / "ratings-only").mkdir()
    (tmp_path / "ratings-only" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,0\n")
    (tmp_path / "ratings-only" / "events").write_text("user_id,item_id,timestamp\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    code = exit_.value.code
    said = str(code) if code not in (None, 2) else capsys.readouterr().err.strip().splitlines()[-1]  # argparse: 2
    assert message.replace("{tmp}", str(tmp_path)) in said
    assert not (tmp_path / "out").exists() and not list((tmp_path / "data").glob("**/raw/*/*/*"))
    assert not (tmp_path / "data" / "benchmarks").exists()  # no benchmark's folder either


def test_a_job_refuses_a_set_without_a_value_in_one_line(tmp_path):
    from jobs import publish

    with pytest.raises(SystemExit, match=r"--set expects section\.key=value, got 'train\.max_steps'"):
        publish.main(["--ds", "2026-01-01", "--set", "train.max_steps"])

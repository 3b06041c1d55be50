"""The layering the README promises, checked on the source: the library imports no job, no job
imports another (only the composition root, jobs/pipeline.py, and the `recsys` command, which runs
the pipeline through it, name stage modules), and DAG files import only Airflow and the standard
library at module level (the pipeline inside task callables)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGE_RUNNERS = {"pipeline.py", "cli.py"}


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_library_imports_no_job():
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "jobs")
        for p in (ROOT / "recsys_lib").rglob("*.py")
    }
    assert {p: m for p, m in offenders.items() if m} == {}


def test_no_job_imports_another_job():
    stages = {p.stem for p in (ROOT / "jobs").glob("*.py") if not p.stem.startswith("_")} - {"pipeline", "cli"}
    offenders = {}
    for path in (ROOT / "jobs").glob("*.py"):
        if path.name in STAGE_RUNNERS:
            continue
        named = {m for m in imported_modules(path) if m.startswith("jobs.") and m.split(".")[1] in stages}
        if named:
            offenders[path.name] = sorted(named)
    assert offenders == {}


def test_dag_files_are_wiring():
    allowed_roots = {"__future__", "datetime", "os", "pendulum", "airflow"}
    for path in (ROOT / "dags").glob("*.py"):
        heavy = {m for m in imported_modules(path, top_level_only=True) if m.split(".")[0] not in allowed_roots}
        assert heavy == set(), path.name

"""The run report: one self-contained HTML page per nightly run, for a person to look at.

Publish gathers what the run left behind (``gather``) and renders it (``render``): the gate's
decision with the candidate's and the champion's numbers, the evaluation tables with plots
(metrics against K for the model and the baselines, the cold-item slice), what was recommended
(popularity and score distributions, catalogue coverage and how concentrated exposure is),
training curves from MLflow, seconds per stage, quarantined rows by reason, and a few users'
histories beside their lists, by title. Plots are matplotlib PNGs inlined as data URIs, so the
file opens anywhere, offline, from MLflow or from the published version that lists it.
Tests: tests/unit/recsys_lib/test_run_report.py.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recsys_lib.evaluation.report import CHAMPION, EvaluationReport, Segment, format_value
from recsys_lib.storage import STAGES_DIR

REPORT_FILE = "report.html"
RUN_REPORT = "report"  # the published version's artefact holding REPORT_FILE
EXAMPLE_USERS = 3
SHOWN_ITEMS = 10
TRAINING_CURVES = ("train_loss", "encoder_loss", "search_loss", "interests_loss", "temperature")


@dataclass
class RunFacts:
    """Everything the page shows, gathered from the run's outputs."""

    ds: str
    model_version: str
    gate: str  # "passed", "first model: no champion", or the refusal
    champion: str | None  # the champion label before this run
    evaluation: EvaluationReport | None
    stages: dict[str, dict[str, Any]]  # stage -> {"seconds": ..., "result": {...}}
    quarantine: dict[str, dict[str, int]]  # entity -> reason -> rows
    training: dict[str, list[tuple[int, float]]]  # MLflow metric -> (step, value) in logged order
    user_topn: pd.DataFrame  # user_id, rank, item_id, score, source
    popularity: pd.Series  # item_id -> distinct users (the catalogue's items, 0 for untouched ones)
    titles: dict[str, str]
    examples: list[tuple[str, list[str], list[str]]] = field(default_factory=list)  # user, history, list


def gather(storage, tracker, ds: str, mv, gate: str, champion: str | None) -> RunFacts:
    """The facts of ``ds``'s run of model version ``mv`` from the work store and MLflow."""
    from recsys_lib.errors import MissingInput
    from recsys_lib.schema import HISTORY_COL, ITEM_COL, N_USERS_COL, TITLE_COL, USER_COL
    from recsys_lib.storage import FeatureTable, OutputTable

    try:
        evaluation = storage.read_evaluation(ds)
    except MissingInput:
        evaluation = None
    stages = {}
    for key in sorted(storage.work.list(storage.run_output(STAGES_DIR, ds) + "/")):
        record = json.loads(storage.work.read_bytes(key))
        stages[record["stage"]] = record
    quarantine = {
        entity: dict(summary.get("by_reason") or {})
        for entity, summary in stages.get("ingest", {}).get("result", {}).items()
        if isinstance(summary, dict) and "rejected" in summary
    }
    training = {}
    for name in TRAINING_CURVES:
        history = tracker.client.get_metric_history(mv.run_id, name)
        if history:
            training[name] = [(m.step, m.value) for m in history]
    for name in sorted(tracker.run_metrics(mv.run_id)):
        if name.startswith("val_") or name.startswith("validation"):
            training[name] = [(m.step, m.value) for m in tracker.client.get_metric_history(mv.run_id, name)]
    user_topn = storage.read_output_table(OutputTable.USER_TOPN, ds).to_pandas()
    documents = storage.read_features(FeatureTable.ITEM_DOCUMENTS, ds, columns=[ITEM_COL, TITLE_COL])
    stats = storage.read_features(FeatureTable.ITEM_STATS, ds, columns=[ITEM_COL, N_USERS_COL])
    popularity = stats.set_index(ITEM_COL)[N_USERS_COL].reindex(documents[ITEM_COL], fill_value=0)
    titles = dict(zip(documents[ITEM_COL], documents[TITLE_COL]))
    histories = storage.read_features(FeatureTable.USER_HISTORIES, ds, columns=[USER_COL, HISTORY_COL])
    return RunFacts(ds, mv.label, gate, champion, evaluation, stages, quarantine, training, user_topn,
                    popularity, titles, examples(histories, user_topn))  # fmt: skip


def examples(histories: pd.DataFrame, user_topn: pd.DataFrame, n: int = EXAMPLE_USERS):
    """A few users with the longest histories: (user, latest history items, their list)."""
    from recsys_lib.schema import HISTORY_COL, ITEM_COL, RANK_COL, USER_COL

    histories = histories.dropna(subset=[HISTORY_COL])
    histories = histories[histories[USER_COL].isin(user_topn[USER_COL])]
    lengths = histories[HISTORY_COL].map(len)
    chosen = histories.loc[lengths.sort_values(ascending=False, kind="stable").index[:n]]
    out = []
    for user, history in zip(chosen[USER_COL], chosen[HISTORY_COL]):
        listed = user_topn[user_topn[USER_COL] == user].sort_values(RANK_COL)[ITEM_COL].tolist()
        out.append((str(user), [str(i) for i in list(history)[-SHOWN_ITEMS:]][::-1], listed[:SHOWN_ITEMS]))
    return out


# Rendering.
def render(facts: RunFacts) -> str:
    """The page, one string of HTML with its plots inline."""
    parts = [f"<h1>Nightly run {_e(facts.ds)}: {_e(facts.model_version)}</h1>", _gate(facts)]
    if facts.evaluation is not None:
        parts.append(_evaluation(facts.evaluation))
    parts.append(_recommended(facts))
    if facts.training:
        parts.append("<h2>Training</h2>" + _img(_training_plot(facts.training)))
    parts.append(_stages(facts.stages))
    parts.append(_quarantine(facts.quarantine))
    parts.append(_examples(facts))
    body = "\n".join(parts)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>recsys run {_e(facts.ds)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.passed { color: #17693a; } .refused { color: #a32020; }
img { max-width: 100%; } ol { margin-top: 0; } td ol { text-align: left; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _gate(facts: RunFacts) -> str:
    ok = not facts.gate.startswith("refused")
    verdict = "passed" if ok else "refused"
    out = [f"<h2>Quality gate: <span class='{'passed' if ok else 'refused'}'>{verdict}</span></h2>",
           f"<p>{_e(facts.gate)}; champion before this run: {_e(facts.champion or 'none')}</p>"]  # fmt: skip
    report = facts.evaluation
    if report is not None:
        rows = {name: report.all_users.get(name) for name in ("model", CHAMPION) if report.all_users.get(name)}
        if rows:
            out.append(_table(rows, [c for c in next(iter(rows.values())) if c != "users"], "candidate vs champion"))
    return "\n".join(out)


def _evaluation(report: EvaluationReport) -> str:
    out = ["<h2>Evaluation</h2>"]
    for segment in (report.all_users, report.light_users, report.cold_items, report.search, report.text_users):
        out.append(_segment(segment))
    out.append(_img(_metrics_vs_k(report)))
    if report.cold_items.rankers:
        out.append(_img(_cold_plot(report)))
    return "\n".join(out)


def _segment(segment: Segment) -> str:
    if not segment.rankers:
        return f"<p><b>{_e(segment.title)}</b>: {_e(segment.note)}</p>"
    columns = list(dict.fromkeys(c for metrics in segment.rankers.values() for c in metrics))
    return _table(segment.rankers, columns, segment.title)


def _table(rows: dict[str, dict[str, float]], columns: list[str], title: str) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        f"<tr><td>{_e(name)}</td>" + "".join(f"<td>{format_value(values.get(c))}</td>" for c in columns) + "</tr>"
        for name, values in rows.items()
    )
    return f"<table><tr><th>{_e(title)}</th>{head}</tr>{body}</table>"


def _recommended(facts: RunFacts) -> str:
    from recsys_lib.schema import ITEM_COL, SCORE_COL, SOURCE_COL, USER_COL

    topn = facts.user_topn
    catalogue = len(facts.popularity)
    exposure = topn[ITEM_COL].value_counts()
    coverage = len(exposure) / catalogue if catalogue else 0.0
    sources = topn.groupby(SOURCE_COL)[USER_COL].nunique().to_dict() if len(topn) else {}
    lines = [
        "<h2>What was recommended</h2>",
        f"<p>{topn[USER_COL].nunique():,} users, {len(topn):,} rows; {len(exposure):,} distinct items: "
        f"<b>{coverage:.1%} of the catalogue</b> ({catalogue:,} items); Gini of exposure "
        f"{gini(exposure.reindex(facts.popularity.index, fill_value=0).to_numpy()):.3f}; "
        f"users by list source: {_e(', '.join(f'{k} {v:,}' for k, v in sorted(sources.items())))}</p>",
    ]
    recommended_pop = facts.popularity.reindex(topn[ITEM_COL]).fillna(0).to_numpy()
    lines.append(_img(_distributions(facts.popularity.to_numpy(), recommended_pop, topn[SCORE_COL].to_numpy(),
                                     topn[SOURCE_COL].to_numpy())))  # fmt: skip
    return "\n".join(lines)


def gini(counts: np.ndarray) -> float:
    """How unequally items are recommended: 0 every item equally often, 1 one item only."""
    counts = np.sort(np.asarray(counts, dtype=np.float64))
    if len(counts) == 0 or counts.sum() == 0:
        return 0.0
    n = len(counts)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(counts) / (n * counts.sum()))


def _stages(stages: dict[str, dict[str, Any]]) -> str:
    if not stages:
        return "<h2>Stages</h2><p>no stage timings recorded</p>"
    ordered = sorted(stages.values(), key=lambda r: r.get("started_at", ""))
    total = sum(r["seconds"] for r in ordered)
    body = "".join(
        f"<tr><td>{_e(r['stage'])}</td><td>{_e(r.get('started_at', ''))}</td><td>{r['seconds']:,.1f}</td>"
        f"<td>{r['seconds'] / max(total, 1e-9):.0%}</td></tr>"
        for r in ordered
    )
    return (f"<h2>Stages</h2><table><tr><th>stage</th><th>started (UTC)</th><th>seconds</th><th>share</th></tr>"
            f"{body}<tr><td>total</td><td></td><td>{total:,.1f}</td><td></td></tr></table>")  # fmt: skip


def _quarantine(quarantine: dict[str, dict[str, int]]) -> str:
    rows = [(entity, reason, n) for entity, reasons in sorted(quarantine.items()) for reason, n in reasons.items()]
    if not rows:
        return "<h2>Quarantine</h2><p>no rows were quarantined</p>"
    body = "".join(f"<tr><td>{_e(e)}</td><td>{_e(r)}</td><td>{n:,}</td></tr>" for e, r, n in rows)
    return f"<h2>Quarantine</h2><table><tr><th>input</th><th>reason</th><th>rows</th></tr>{body}</table>"


def _examples(facts: RunFacts) -> str:
    if not facts.examples:
        return ""
    out = ["<h2>Example users</h2>"]
    for user, history, listed in facts.examples:
        seen = "".join(f"<li>{_e(facts.titles.get(i, i))}</li>" for i in history)
        recs = "".join(f"<li>{_e(facts.titles.get(i, i))}</li>" for i in listed)
        out.append(f"<h3>user {_e(user)}</h3><table><tr><th>latest history</th><th>recommended</th></tr>"
                   f"<tr><td><ol>{seen}</ol></td><td><ol>{recs}</ol></td></tr></table>")  # fmt: skip
    return "\n".join(out)


# Plots.
def _figure(width: float = 10, height: float = 3.2, columns: int = 2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=(width, height), squeeze=False)


def _img(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _metrics_vs_k(report: EvaluationReport):
    fig, axes = _figure()
    for ax, metric in zip(axes[0], ("ndcg", "recall")):
        for name, metrics in report.all_users.rankers.items():
            points = [(k, metrics[f"{metric}_at_{k}"]) for k in report.ks if f"{metric}_at_{k}" in metrics]
            if points:
                ax.plot(*zip(*points), marker="o", label=name, linewidth=2.5 if name == "model" else 1.2)
        ax.set_xlabel("K")
        ax.set_title(f"{metric.upper()}@K, all users")
        ax.set_xticks(list(report.ks))
    axes[0][0].legend(fontsize=8)
    return fig


def _cold_plot(report: EvaluationReport):
    fig, axes = _figure(columns=1, width=6)
    ax = axes[0][0]
    rankers = [r for r, m in report.cold_items.rankers.items() if f"ndcg_at_{report.ks[0]}" in m]
    k = report.ks[0]
    x = np.arange(len(rankers))
    for offset, metric in ((-0.2, f"recall_at_{k}"), (0.2, f"ndcg_at_{k}")):
        ax.bar(x + offset, [report.cold_items.rankers[r].get(metric, 0) for r in rankers], 0.4, label=metric)
    ax.set_xticks(x, rankers)
    ax.set_title("cold items (known by text alone)")
    ax.legend(fontsize=8)
    return fig


def _distributions(catalogue_pop, recommended_pop, scores, sources):
    fig, axes = _figure(columns=2)
    bins = np.linspace(0, np.log1p(max(catalogue_pop.max(initial=0), 1)), 30)
    axes[0][0].hist(np.log1p(catalogue_pop), bins=bins, density=True, alpha=0.5, label="catalogue")
    axes[0][0].hist(np.log1p(recommended_pop), bins=bins, density=True, alpha=0.5, label="recommended slots")
    axes[0][0].set_xlabel("log(1 + users who interacted)")
    axes[0][0].set_title("popularity of items")
    axes[0][0].legend(fontsize=8)
    for source in sorted(set(sources)):
        axes[0][1].hist(scores[sources == source], bins=40, alpha=0.6, label=source)
    axes[0][1].set_title("scores in user_topn, by list source")
    axes[0][1].legend(fontsize=8)
    return fig


def _training_plot(training: dict[str, list[tuple[int, float]]]):
    losses = {k: v for k, v in training.items() if k.endswith("loss")}
    others = {k: v for k, v in training.items() if not k.endswith("loss") and k != "temperature"}
    fig, axes = _figure()
    for ax, curves, title in ((axes[0][0], losses, "losses"), (axes[0][1], others, "validation")):
        for name, points in curves.items():
            ax.plot(range(len(points)), [v for _, v in points], label=name)
        ax.set_title(title)
        ax.set_xlabel("logged point (evaluation model, then served model)")
        if curves:
            ax.legend(fontsize=8)
    return fig

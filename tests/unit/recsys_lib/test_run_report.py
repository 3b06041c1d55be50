"""The run report renders every section from hand-made facts, self-contained (plots inline)."""

import re

import numpy as np
import pandas as pd
import pytest

from recsys_lib.run_report import RunFacts, examples, gini, render
from tests.conftest import evaluation_report


def facts(gate="passed (same split)", **overrides) -> RunFacts:
    topn = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2"], "rank": [1, 2, 1, 2], "item_id": ["a", "b", "a", "c"],
        "score": [9.0, 8.0, 1.0, 0.5], "source": ["history", "history", "popularity", "popularity"],
    })  # fmt: skip
    base = dict(
        ds="2026-01-01",
        model_version="recsys/2",
        gate=gate,
        champion="recsys/1",
        evaluation=evaluation_report({"ndcg_at_10": 0.3, "recall_at_10": 0.4, "ndcg_at_20": 0.35,
                                      "recall_at_20": 0.5}, champion={"ndcg_at_10": 0.25}),  # fmt: skip
        stages={"train": {"stage": "train", "started_at": "2026-01-01T00:01:00", "seconds": 30.0},
                "ingest": {"stage": "ingest", "started_at": "2026-01-01T00:00:00", "seconds": 10.0}},  # fmt: skip
        quarantine={"interactions": {"timestamp: not a time": 3}, "items": {}},
        training={"train_loss": [(0, 2.0), (10, 1.5)], "val_ndcg_at_10": [(9, 0.1), (19, 0.2)]},
        user_topn=topn,
        popularity=pd.Series({"a": 5, "b": 1, "c": 0, "d": 0}),
        titles={"a": "Alien <1979>", "b": "Brazil", "c": "Casablanca"},
        examples=[("u1", ["c"], ["a", "b"])],
    )
    return RunFacts(**{**base, **overrides})


def test_the_page_has_every_section_and_inline_plots():
    page = render(facts())
    for text in ("Nightly run 2026-01-01: recsys/2", "Quality gate", "passed (same split)",
                 "champion before this run: recsys/1", "candidate vs champion", "What was recommended", "Training",
                 "Stages", "Quarantine",
                 "timestamp: not a time", "Example users", "Casablanca"):  # fmt: skip
        assert text in page, text
    assert "Alien &lt;1979&gt;" in page and "<1979>" not in page  # titles are escaped
    # metrics vs K, popularity and score distributions, training curves (no cold slice in this report)
    assert len(re.findall(r"src=.data:image/png;base64,", page)) == 3
    assert "http" not in page  # self-contained: nothing to fetch
    # 3 of 4 catalogue items recommended; stages in the order they ran, with their shares.
    assert "75.0% of the catalogue" in page
    assert page.index("<td>ingest</td>") < page.index("<td>train</td>") and "<td>75%</td>" in page


def test_a_refused_run_says_so():
    page = render(facts(gate="refused: ndcg_at_10: candidate 0.2 < champion 0.3", evaluation=None, training={},
                        stages={}, quarantine={}))  # fmt: skip
    assert "class='refused'>refused" in page and "no rows were quarantined" in page
    assert "no stage timings recorded" in page


def test_gini_of_exposure():
    assert gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # one of four items gets everything
    assert gini(np.array([0, 0])) == 0.0


def test_examples_are_the_longest_histories_with_their_lists():
    histories = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "history": [["a"], ["a", "b", "c"], None]})
    topn = facts().user_topn
    assert examples(histories, topn, n=1) == [("u2", ["c", "b", "a"], ["a", "c"])]

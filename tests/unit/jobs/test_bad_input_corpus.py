"""The bad-input corpus: small raw drops, each case asserting its exact outcome.

A case is quarantined with the exact reason, refused with the exact message, or accepted with
the exact stored value. Row-level cases share one drop (each bad row names its case in an id
column), so one ingest on real Spark checks them all; file-level cases get a drop each, and
every refused drop leaves the lake byte for byte as the good drop before it left it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re

import pandas as pd
import pytest

from jobs import ingest
from recsys_lib.errors import DataValidationError, SchemaError
from recsys_lib.storage import Storage
from tests.conftest import make_settings

DS = "2026-01-02"  # its end: 2026-01-03T00:00:00Z
T0 = 1767225600  # 2026-01-01T00:00:00Z

GOOD_ITEMS = """item_id,title,categories,updated_at
i1,Alpha,Drama,
i2,Beta,Comedy,
i3,Gamma,Drama|Comedy,
"""

# Row-level item cases: item_id -> expected reason (None: accepted).
ITEM_ROWS = """item_id,title,categories,updated_at
,No id,Drama,
no-title,,Drama,
future,Future,Drama,2026-01-05
bad-updated,Bad updated,Drama,last tuesday
dup-later,Old title,Drama,2025-01-01
dup-later,New title,Drama,2025-06-01
dup-tie,First,Drama,2025-06-01
dup-tie,Last,Drama,2025-06-01
json-cats,Json cats,"[""Drama"", ""Thriller""]",
mixed-seps,Mixed seps,"Drama, Thriller; Noir",
amelie,"Le fabuleux destin d'Amélie Poulain, 2001",Romance,
spaces,  Padded title  ,Drama,
"""
ITEM_REASONS = {
    None: "item_id: missing",  # the row without an id
    "no-title": "title: missing",
    "future": f"updated_at: after the logical date {DS}",
    "bad-updated": "updated_at: not epoch seconds or ISO-8601",
    "dup-later": "item_id: superseded by a row for the same item with a later updated_at",
    "dup-tie": (
        "item_id: another row for the same item has the same updated_at (or none); the later row in file order wins"
    ),
}

# Row-level interaction cases: each bad row's user_id (or, without one, item_id) names the case.
INTERACTION_ROWS = f"""user_id,item_id,timestamp,event_type,rating,weight
u1,i1,{T0},,,
u1,i2,{T0 + 60},,,
u2,i2,{T0 + 120},,,
u2,i3,{T0 + 180},,,
u3,i1,{T0 + 240},,4.5,
,no-user,{T0},,,
no-item,,{T0},,,
no-time,i1,,,,
words-time,i1,yesterday,,,
future-time,i1,{T0 + 2 * 86400},,,
epoch-1970,i1,0,,,
inf-rating,i1,{T0},,Infinity,
nan-rating,i1,{T0},,NaN,
word-rating,i1,{T0},,five,
inf-weight,i1,{T0},,,inf
negative-weight,i1,{T0},,,-1
unknown-item,nowhere,{T0},,,
rejected-item,no-title,{T0},,,
repeat,i1,{T0},,,
repeat,i1,{T0},,,
iso-time,i2,2026-01-01T10:00:00Z,,,
millis-time,i2,{(T0 + 30) * 1000},,,
  padded-user  ,i3,{T0},click,,2.5
"""
INTERACTION_REASONS = {
    "no-user": "user_id: missing",
    "no-item": "item_id: missing",
    "no-time": "timestamp: missing",
    "words-time": "timestamp: not epoch seconds or ISO-8601",
    "future-time": f"timestamp: after the logical date {DS}",
    "epoch-1970": "timestamp: before ingest.min_timestamp 1990-01-01",
    "inf-rating": "rating: not a finite number",
    "nan-rating": "rating: not a finite number",
    "word-rating": "rating: not a finite number",
    "inf-weight": "weight: not a finite non-negative number",
    "negative-weight": "weight: not a finite non-negative number",
    "unknown-item": "item_id: not in the item catalogue",
    "rejected-item": "item_id: its catalogue row was rejected (title: missing)",
    "repeat": "timestamp: duplicate event (same user, item, time, type)",
}

USER_ROWS = """user_id,segment,updated_at
u1,students,
,orphans,
future-user,later,2026-02-01
"""
USER_REASONS = {None: "user_id: missing", "future-user": f"updated_at: after the logical date {DS}"}


def lake_bytes(storage: Storage) -> dict[str, str]:
    return {k: hashlib.sha256(storage.work.read_bytes(k)).hexdigest() for k in storage.work.list("lake/")}


def land(storage: Storage, ds: str = DS, **entities: dict[str, bytes]) -> None:
    """Make the given files (entity -> {name: bytes}) the whole raw drop of ds."""
    for entity in ("items", "interactions", "users"):
        storage.replace_raw_drop(entity, ds, entities.get(entity, {}))


def quarantined(storage: Storage, entity: str, key: str) -> dict:
    df = storage.work.read_table(Storage.quarantine(entity, DS)).to_pandas()
    return {(None if pd.isna(k) else k): r for k, r in zip(df[key], df["reason"])}


def lake(storage: Storage, entity: str) -> pd.DataFrame:
    return storage.work.read_table(Storage.lake_partition(entity, DS)).to_pandas()


@pytest.fixture
def corpus_settings(tmp_path):
    return make_settings(tmp_path / "data", **{"ingest.max_reject_fraction": 0.9})


@pytest.mark.spark
def test_row_level_cases_are_quarantined_with_their_reason_or_stored_exactly(spark, corpus_settings):
    storage = Storage(corpus_settings)
    interactions = {
        "interactions.csv": INTERACTION_ROWS.encode(),
        # Parquet from pandas with a gap in a numeric id column: the ids are floats.
        "more.parquet": _parquet(pd.DataFrame({"user_id": [7.0, None], "item_id": ["i1", "i2"],
                                               "timestamp": [T0 + 300, T0 + 360]})),  # fmt: skip
        # JSON lines with one line cut short: the text is kept for whoever fixes the feed.
        "log.jsonl": (json.dumps({"user_id": "u4", "item_id": "i1", "timestamp": T0})
                      + '\n{"user_id": "u5", "item\n').encode(),
    }  # fmt: skip
    land(storage, items={"items.csv": (GOOD_ITEMS + ITEM_ROWS.split("\n", 1)[1]).encode()},
         interactions=interactions, users={"users.csv": USER_ROWS.encode()})  # fmt: skip
    ingest.run(corpus_settings, DS)

    assert quarantined(storage, "items", "item_id") == ITEM_REASONS
    reasons = storage.work.read_table(Storage.quarantine("interactions", DS)).to_pandas()
    by_case = {}
    for row in reasons.itertuples():
        case = next((v for v in (row.user_id, row.item_id) if isinstance(v, str)), None)
        by_case.setdefault(case, set()).add(row.reason)
    broken = reasons[reasons["raw_record"].notna()]
    assert broken["reason"].tolist() == ["row: not valid JSON (its text is kept in raw_record)"]
    assert broken["raw_record"].tolist() == ['{"user_id": "u5", "item']
    assert by_case.pop(None) == {"row: not valid JSON (its text is kept in raw_record)"}
    assert by_case.pop("i2") == {"user_id: missing"}  # the Parquet row with a gap for its user
    assert by_case == {case: {reason} for case, reason in INTERACTION_REASONS.items()}
    # Both copies of the repeated event: one accepted, one rejected.
    assert (reasons["user_id"] == "repeat").sum() == 1
    assert quarantined(storage, "users", "user_id") == USER_REASONS

    items = lake(storage, "items").set_index("item_id")
    assert items.loc["dup-later", "title"] == "New title"
    assert items.loc["dup-tie", "title"] == "Last"
    assert list(items.loc["json-cats", "categories"]) == ["Drama", "Thriller"]
    assert list(items.loc["mixed-seps", "categories"]) == ["Drama", "Thriller", "Noir"]
    assert items.loc["amelie", "title"] == "Le fabuleux destin d'Amélie Poulain, 2001"
    assert items.loc["spaces", "title"] == "Padded title"

    events = lake(storage, "interactions")
    seconds = {(r.user_id, r.item_id): pd.Timestamp(r.timestamp).timestamp() for r in events.itertuples()}
    assert seconds[("iso-time", "i2")] == T0 + 10 * 3600
    assert seconds[("millis-time", "i2")] == T0 + 30
    assert seconds[("7", "i1")] == T0 + 300  # 7.0 -> "7", the id the CSV rows would use
    assert seconds[("u4", "i1")] == T0
    padded = events[events["user_id"] == "padded-user"].iloc[0]
    assert (padded["event_type"], padded["weight"]) == ("click", 2.5)
    u3 = events[events["user_id"] == "u3"].iloc[0]
    assert (u3["rating"], u3["weight"], u3["event_type"]) == (4.5, 1.0, "interaction")
    assert ("repeat", "i1") in seconds


def _parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


GOOD_EVENTS = "".join(f"u{n % 3},i{1 + n % 3},{T0 + n}\n" for n in range(9))
FILE_CASES = {
    "latin-1 catalogue": (
        {"items": {"items.csv": "item_id,title\ni1,Amélie\n".encode("latin-1")}},
        SchemaError,
        r"items/ds=2026-01-02/items\.csv: not valid utf-8 at byte 19 \(invalid continuation byte\); convert the "
        r"file or set ingest\.encoding to its encoding \(e\.g\. latin-1\)$",
    ),
    "interactions without item_id": (
        {"interactions": {"events.csv": b"user_id,timestamp\nu1,1767225600\n"}},
        SchemaError,
        r"events\.csv: missing required interactions column\(s\) item_id \(found: user_id, timestamp\)",
    ),
    "items without title": (
        {"items": {"items.csv": b"item_id,name\ni1,Alpha\n"}},
        SchemaError,
        r"items\.csv: missing required items column\(s\) title \(found: item_id, name\)",
    ),
    "an empty items file": (
        {"items": {"items.csv": b""}},
        SchemaError,
        r"items/ds=2026-01-02/items\.csv: empty file \(no header row\)$",
    ),
    "an empty JSON-lines events file": (
        {"interactions": {"events.jsonl": b""}},
        SchemaError,
        r"interactions/ds=2026-01-02/events\.jsonl: empty file \(no records\)$",
    ),
    "a header naming item_id twice": (
        {"interactions": {"events.csv": b"user_id,item_id,timestamp,item_id\nu1,i1,1767225600,i2\n"}},
        SchemaError,
        r"events\.csv: column\(s\) item_id appear more than once in the header$",
    ),
    "a pretty-printed JSON array": (
        {"items": {"items.json": json.dumps([{"item_id": "i1", "title": "Alpha"}], indent=2).encode()}},
        SchemaError,
        r"items\.json: not JSON lines \(one object per line\); a JSON array or an object spread over several lines",
    ),
    "no interactions file": (
        {"interactions": {}},
        SchemaError,
        r"no interactions for 2026-01-02: .*raw/interactions/ds=2026-01-02 holds no CSV/Parquet/JSON file",
    ),
    "only a README in the drop": (
        {"interactions": {"README.txt": b"see the wiki"}},
        SchemaError,
        r"no interactions for 2026-01-02",
    ),
    "most rows rejected": (
        {"interactions": {"events.csv": ("user_id,item_id,timestamp\n" + "u1,nowhere,1767225600\n" * 5
                                         + "u1,i1,1767225600\n").encode()}},
        DataValidationError,
        r"events\.csv: 5 of 6 interactions rows rejected \(83\.3%, limit 50\.0%\) - item_id: not in the item "
        r"catalogue: 5 rows\nRejected rows with their reasons: .*/quarantine/interactions/ds=2026-01-02\. "
        r"Nothing was written to the lake\.$",
    ),
    "bad items sink a good interactions file": (
        {"items": {"items.csv": b"item_id,title\ni1,\ni2,\ni3,Gamma\n"}},
        DataValidationError,
        r"items\.csv: 2 of 3 items rows rejected .* title: missing: 2 rows\n.*Nothing was written to the lake",
    ),
}  # fmt: skip


@pytest.mark.spark
def test_refused_drops_say_why_in_one_message_and_leave_the_lake_as_it_was(spark, tmp_path):
    settings = make_settings(tmp_path / "data", **{"ingest.max_reject_fraction": 0.5})
    storage = Storage(settings)
    good = {"items": {"items.csv": GOOD_ITEMS.encode()},
            "interactions": {"events.csv": ("user_id,item_id,timestamp\n" + GOOD_EVENTS).encode()}}  # fmt: skip
    land(storage, **good)
    ingest.run(settings, DS)
    before = lake_bytes(storage)
    failures = {}
    for name, (files, error, message) in FILE_CASES.items():
        land(storage, **{**good, **files})
        with pytest.raises(error) as raised:
            ingest.run(settings, DS)
        text = str(raised.value)
        if not re.search(message, text):
            failures[name] = text
        assert lake_bytes(storage) == before, name
        assert not storage.work.list("staging/"), name
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())


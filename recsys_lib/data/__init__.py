"""Data sources mapped onto the input contract (see recsys_lib.schema): the bundled MovieLens
sample and its larger siblings (movielens.py), RecBole atomic files (atomic.py: the many public
datasets RecBole distributes in that format), and a seeded synthetic generator for tests and
scale benchmarks (synthetic.py). Landing a source as a raw drop is ``land_raw_drop``.
Tests: tests/unit/recsys_lib/data/.
"""

from __future__ import annotations

import io

import pandas as pd

from recsys_lib.storage import Storage

FORMATS = ("csv", "parquet", "jsonl")


def land_raw_drop(
    storage: Storage,
    ds: str,
    interactions: pd.DataFrame,
    items: pd.DataFrame | None,
    fmt: str = "csv",
    users: pd.DataFrame | None = None,
) -> dict[str, str]:
    """Write contract-shaped frames as the raw drop of ``ds``, replacing any earlier drop of ds
    (an entity passed as None has no file in the new drop)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    written = {}
    for entity, frame in (("interactions", interactions), ("items", items), ("users", users)):
        files = {} if frame is None else {f"{entity}.{fmt}": to_bytes(frame, fmt)}
        for uri in storage.replace_raw_drop(entity, ds, files):
            written[entity] = uri
    return written


def to_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """A contract-shaped frame as a file in one of FORMATS."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    buf = io.BytesIO()
    if fmt == "csv":
        frame.to_csv(buf, index=False)
    elif fmt == "parquet":
        frame.to_parquet(buf, index=False)
    else:
        frame.to_json(buf, orient="records", lines=True)
    return buf.getvalue()

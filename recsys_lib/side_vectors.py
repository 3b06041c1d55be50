"""Items' side vectors: precomputed signals beyond text (an image embedding, say) that the item
tower fuses with the text (``ItemTower.project``).

They come from the Parquet file ``model.side_vectors`` names (a path or URI; columns ``item_id``
and ``vector``, a list of floats), read whole by every stage that builds item vectors: train,
embed_items and evaluate. Rows that cannot be used (no vector, another length than the file's
most common one, a value that is not finite) are quarantined with their reason under
``quarantine/side_vectors/ds=<ds>``; an item listed twice keeps its last row; items outside the
catalogue are ignored; a catalogue item without a row is its text alone.
Tests: tests/unit/recsys_lib/test_side_vectors.py.
"""

from __future__ import annotations

import io
import logging
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_lib.errors import DataValidationError, SettingsError
from recsys_lib.schema import ITEM_COL, REASON_COL, VECTOR_COL

log = logging.getLogger(__name__)

ENTITY = "side_vectors"


def read_side_vectors(storage, item_ids: pd.Index, ds: str, side_dim: int | None = None) -> np.ndarray | None:
    """[n_items, dim] float32 side vectors in ``item_ids`` order (zeros for an item without one),
    or None when ``model.side_vectors`` is empty.

    Args:
        storage: a ``Storage`` (its settings name the file; rejected rows go to its quarantine).
        side_dim: the width a trained model takes (None: whatever the file holds). Where the
            file is gone or holds another width, that model gets zeros: its text alone.
    """
    location = storage.settings.model.side_vectors
    if not location:
        if side_dim:  # a champion trained with them, after they were turned off: its text alone
            log.warning("the model takes side vectors, model.side_vectors is empty: its items are their text alone")
            return np.zeros((len(item_ids), side_dim), dtype=np.float32)
        return None
    try:
        table = pq.read_table(io.BytesIO(storage.read_location(location)))
    except (OSError, pa.ArrowInvalid) as e:
        raise SettingsError(f"model.side_vectors {location}: cannot read it as Parquet ({e})") from e
    missing = {ITEM_COL, VECTOR_COL} - set(table.column_names)
    if missing:
        raise SettingsError(f"model.side_vectors {location}: no column {', '.join(sorted(missing))}")
    ids = [None if v is None else str(v) for v in table.column(ITEM_COL).to_pylist()]
    vectors = table.column(VECTOR_COL).to_pylist()
    lengths = Counter(len(v) for v in vectors if v)
    dim = lengths.most_common(1)[0][0] if lengths else 0
    if side_dim and dim != side_dim:  # a champion trained on other side vectors: its text alone
        log.warning("the model takes side vectors of %d values, %s holds %d: its items are their text alone",
                    side_dim, location, dim)  # fmt: skip
        return np.zeros((len(item_ids), side_dim), dtype=np.float32)
    reasons = [_problem(i, v, dim) for i, v in zip(ids, vectors)]
    rejected = [(i, r) for i, r in zip(ids, reasons) if r]
    if rejected:
        _quarantine(storage, ds, rejected)
    good = [(i, v) for i, v, r in zip(ids, vectors, reasons) if not r]
    if not good:
        raise DataValidationError(f"model.side_vectors {location}: no usable row ({len(rejected):,} rejected)")
    out = np.zeros((len(item_ids), dim), dtype=np.float32)
    rows = item_ids.get_indexer(pd.Index([i for i, _ in good], dtype=object))
    matrix = np.asarray([v for _, v in good], dtype=np.float32)
    out[rows[rows >= 0]] = matrix[rows >= 0]  # the last row of an item listed twice wins
    covered = int((np.abs(out).sum(1) > 0).sum())
    log.info("side vectors of %d values for %d of %d catalogue items (%s)", dim, covered, len(item_ids), location)
    return out


def _problem(item_id, vector, dim: int) -> str:
    if item_id is None or not item_id.strip():
        return "item_id is missing"
    if not vector:
        return "vector is missing or empty"
    if len(vector) != dim:
        return f"vector has {len(vector)} values, expected {dim}"
    if any(v is None for v in vector) or not np.isfinite(np.asarray(vector, dtype=np.float64)).all():
        return "vector has a missing, NaN or infinite value"
    return ""


def _quarantine(storage, ds: str, rejected: list[tuple[str | None, str]]) -> None:
    table = pa.table({ITEM_COL: [i for i, _ in rejected], REASON_COL: [r for _, r in rejected]})
    key = storage.quarantine(ENTITY, ds)
    storage.work.replace_table(key, table)
    by_reason = "; ".join(f"{r}: {n:,} rows" for r, n in Counter(r for _, r in rejected).most_common())
    log.warning("model.side_vectors: %d rows quarantined at %s (%s)", len(rejected), storage.work.uri(key), by_reason)

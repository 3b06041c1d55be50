"""Checks the staged tables must pass before they may go live.

Each check returns human-readable failures; an empty list means the table may go live. The
contract: the schema, ranks 1..N, no duplicates, no seen item, items from the active catalogue,
finite scores, reasons from the user's history, every active user covered; then coverage and
overlap bounds against the live version.
Tests: tests/unit/recsys_lib/test_checks.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys_lib.evaluation.metrics import catalogue_coverage
from recsys_lib.schema import (
    ITEM_COL,
    ITEM_SIMILAR_SCHEMA,
    ITEM_VECTORS_SCHEMA,
    QUERY_COL,
    QUERY_TOPN_SCHEMA,
    RANK_COL,
    REASON_ITEM_COL,
    SCORE_COL,
    SEEN_COL,
    SIMILAR_ITEM_COL,
    USER_COL,
    USER_TOPN_SCHEMA,
    USER_VECTORS_SCHEMA,
    VECTOR_COL,
)
from recsys_lib.settings import PublishSettings
from recsys_lib.storage import OutputTable


def check_tables(
    tables: dict[OutputTable, pa.Table],
    histories: pd.DataFrame,
    catalogue: pd.Series,
    previous_topn: pd.DataFrame | None,
    cfg: PublishSettings,
    queries: list[str] | None = None,
) -> list[str]:
    """Every check of the staged tables, each failure prefixed with its table's name.

    Args:
        histories: user_id, seen of every active user.
        catalogue: the active catalogue's item ids (blocked items left out).
        previous_topn: the live user top-N, or None before the first publish.
        queries: the frequent queries query_topn must answer (None: no query_topn check).
    """
    topn = tables[OutputTable.USER_TOPN].to_pandas()
    similar = tables[OutputTable.ITEM_SIMILAR]
    active = set(catalogue)
    topn_schema = tables[OutputTable.USER_TOPN].schema
    failures = [f"user_topn: {f}" for f in check_user_topn(topn, histories, active, topn_schema)]
    failures += [f"item_similar: {f}" for f in check_item_similar(similar.to_pandas(), active, similar.schema)]
    failures += [f"user_topn: {f}" for f in check_against_previous(topn, previous_topn, len(catalogue), cfg)]
    vectors = {
        OutputTable.ITEM_VECTORS: (ITEM_COL, ITEM_VECTORS_SCHEMA, active, True),
        OutputTable.USER_VECTORS: (USER_COL, USER_VECTORS_SCHEMA, set(histories[USER_COL]), False),
    }
    for name, (key, schema, expected, complete) in vectors.items():
        if name in tables:
            failures += [f"{name}: {f}" for f in check_vectors(tables[name], key, schema, expected, complete)]
    if queries is not None and OutputTable.QUERY_TOPN in tables:
        searched = tables[OutputTable.QUERY_TOPN]
        checked = check_query_topn(searched.to_pandas(), active, queries, searched.schema)
        failures += [f"query_topn: {f}" for f in checked]
    return failures


def check_query_topn(
    searched: pd.DataFrame, catalogue: set[str] | pd.Index, queries: list[str], schema: pa.Schema | None = None
) -> list[str]:
    """The frequent-query table: its schema, ranks 1..N, active items only, and rows for every
    query it was asked (empty when the search log is)."""
    failures = []
    if schema is not None and not schema.equals(QUERY_TOPN_SCHEMA):
        failures.append(f"schema differs from the contract: {schema} != {QUERY_TOPN_SCHEMA}")
    if len(searched):
        failures += _check_ranks(searched, QUERY_COL, ITEM_COL)
        unknown = ~searched[ITEM_COL].isin(catalogue)
        if unknown.any():
            failures.append(f"{int(unknown.sum())} rows list items outside the active catalogue")
    missing = set(queries) - set(searched[QUERY_COL])
    if missing:
        failures.append(f"{len(missing)} frequent queries have no results, e.g. {sorted(missing)[:3]}")
    return failures


def check_vectors(table: pa.Table, key: str, schema: pa.Schema, expected: set[str], complete: bool) -> list[str]:
    """A vectors table: its schema, one row per key, keys from ``expected`` (all of them when
    ``complete``), vectors of one length, finite."""
    if not table.schema.equals(schema):
        return [f"schema differs from the contract: {table.schema} != {schema}"]
    failures = []
    keys = table.column(key).to_pandas()
    if keys.duplicated().any():
        failures.append(f"{int(keys.duplicated().sum())} duplicate {key} rows")
    unknown = set(keys) - expected
    if unknown:
        failures.append(f"{len(unknown)} {key}s are not expected here, e.g. {sorted(unknown)[:3]}")
    missing = expected - set(keys)
    if complete and missing:
        failures.append(f"{len(missing)} {key}s have no vector, e.g. {sorted(missing)[:3]}")
    lengths = pc.list_value_length(table.column(VECTOR_COL))
    if len(table) and pc.min_max(lengths)["min"] != pc.min_max(lengths)["max"]:
        failures.append("vectors differ in length")
    values = pc.list_flatten(table.column(VECTOR_COL)).to_numpy(zero_copy_only=False)
    if not np.isfinite(values).all():
        failures.append(f"{int((~np.isfinite(values)).sum())} vector values are not finite")
    return failures


def check_user_topn(
    topn: pd.DataFrame, histories: pd.DataFrame, catalogue: set[str] | pd.Index, schema: pa.Schema | None = None
) -> list[str]:
    """Contract checks of a user top-N table before publish.

    Args:
        topn: the table (user_id, rank, item_id, score, ...).
        histories: user_id and ``seen`` (every item the user interacted with up to ds); each
            of these users must be covered.
        catalogue: item ids that may be recommended.
    """
    failures = []
    if schema is not None and not schema.equals(USER_TOPN_SCHEMA):
        failures.append(f"schema differs from the contract: {schema} != {USER_TOPN_SCHEMA}")
    failures += _check_ranks(topn, USER_COL, ITEM_COL)
    unknown = ~topn[ITEM_COL].isin(catalogue)
    if unknown.any():
        example = topn.loc[unknown, ITEM_COL].iloc[0]
        failures.append(
            f"{int(unknown.sum())} rows recommend items outside the active catalogue (unknown or blocked), "
            f"e.g. {example}"
        )
    seen = histories[[USER_COL, SEEN_COL]].explode(SEEN_COL).rename(columns={SEEN_COL: ITEM_COL})
    overlap = topn[[USER_COL, ITEM_COL]].merge(seen, on=[USER_COL, ITEM_COL])
    if len(overlap):
        u, i = overlap.iloc[0]
        failures.append(f"{len(overlap)} rows recommend an item the user has already seen, e.g. user {u} item {i}")
    if REASON_ITEM_COL in topn:
        explained = topn.loc[topn[REASON_ITEM_COL].notna(), [USER_COL, REASON_ITEM_COL]]
        known = explained.merge(seen.rename(columns={ITEM_COL: REASON_ITEM_COL}), on=[USER_COL, REASON_ITEM_COL])
        if len(known) < len(explained):
            failures.append(f"{len(explained) - len(known)} rows give a reason item outside the user's history")
    missing = set(histories[USER_COL]) - set(topn[USER_COL])
    if missing:
        failures.append(f"{len(missing)} active users have no recommendations, e.g. {sorted(missing)[:3]}")
    return failures


def check_item_similar(
    similar: pd.DataFrame, catalogue: set[str] | pd.Index, schema: pa.Schema | None = None
) -> list[str]:
    failures = []
    if schema is not None and not schema.equals(ITEM_SIMILAR_SCHEMA):
        failures.append(f"schema differs from the contract: {schema} != {ITEM_SIMILAR_SCHEMA}")
    failures += _check_ranks(similar, ITEM_COL, SIMILAR_ITEM_COL)
    itself = similar[ITEM_COL] == similar[SIMILAR_ITEM_COL]
    if itself.any():
        failures.append(f"{int(itself.sum())} rows list an item as similar to itself")
    unknown = ~similar[SIMILAR_ITEM_COL].isin(catalogue)
    if unknown.any():
        failures.append(f"{int(unknown.sum())} rows point to items outside the catalogue")
    return failures


def _check_ranks(table: pd.DataFrame, key: str, value: str) -> list[str]:
    failures = []
    if len(table) == 0:
        return ["the table is empty"]
    if table[[key, value, RANK_COL, SCORE_COL]].isna().any().any():
        failures.append("null values in key columns")
    if not np.isfinite(table[SCORE_COL].to_numpy(dtype=np.float64)).all():
        failures.append(
            f"{int((~np.isfinite(table[SCORE_COL].to_numpy(dtype=np.float64))).sum())} scores are not finite"
        )
    dupes = table.duplicated([key, value])
    if dupes.any():
        failures.append(f"{int(dupes.sum())} duplicate ({key}, {value}) pairs")
    ranks = table.sort_values([key, RANK_COL])
    expected = ranks.groupby(key).cumcount() + 1
    bad = ranks[RANK_COL].to_numpy() != expected.to_numpy()
    if bad.any():
        failures.append(f"ranks are not 1..N per {key} (e.g. {key} {ranks.loc[bad, key].iloc[0]})")
    return failures


def mean_overlap(topn: pd.DataFrame, previous: pd.DataFrame) -> float:
    """Mean over users present in both tables of |new top-N ∩ old top-N| / |new top-N|."""
    both = topn[[USER_COL, ITEM_COL]].merge(previous[[USER_COL, ITEM_COL]], on=[USER_COL, ITEM_COL])
    shared_users = set(previous[USER_COL])
    sizes = topn[topn[USER_COL].isin(shared_users)].groupby(USER_COL).size()
    if sizes.empty:
        return 1.0
    hits = both.groupby(USER_COL).size().reindex(sizes.index, fill_value=0)
    return float((hits / sizes).mean())


def check_against_previous(
    topn: pd.DataFrame, previous: pd.DataFrame | None, catalogue_size: int, cfg: PublishSettings
) -> list[str]:
    """Coverage and overlap bounds of a new user top-N table relative to the live one
    (``publish.min_coverage``, ``max_coverage_drop``, ``min_overlap``)."""
    min_coverage, max_coverage_drop, min_overlap = cfg.min_coverage, cfg.max_coverage_drop, cfg.min_overlap
    failures = []
    coverage = catalogue_coverage(topn[ITEM_COL], catalogue_size)
    if coverage < min_coverage:
        failures.append(f"catalogue coverage {coverage:.4f} is below publish.min_coverage {min_coverage}")
    if previous is None or len(previous) == 0:
        return failures
    before = catalogue_coverage(previous[ITEM_COL], catalogue_size)
    if coverage < before * (1 - max_coverage_drop):
        failures.append(
            f"catalogue coverage fell from {before:.4f} to {coverage:.4f}, more than publish.max_coverage_drop "
            f"({max_coverage_drop:.0%})"
        )
    overlap = mean_overlap(topn, previous)
    if overlap < min_overlap:
        failures.append(f"mean overlap with the live top-N is {overlap:.4f}, below publish.min_overlap {min_overlap}")
    return failures

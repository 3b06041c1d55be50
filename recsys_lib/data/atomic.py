"""RecBole atomic files (``<name>.inter``, ``<name>.item``, ``<name>.user``) mapped onto the
input contract.

RecBole publishes dozens of public datasets in this format (tab-separated, a header of
``field:type`` pairs; ``token_seq`` fields are space-separated tokens), and its wheel ships
MovieLens 100k as ``recbole/dataset_example/ml-100k``. Field names differ per dataset, so each
contract column takes the first field present from a short list of the names RecBole uses:

  interactions  user_id, item_id, timestamp, rating
  items         title: movie_title | title | item_name | name (+ " (<release_year>)" when present)
                categories: class | genre | categories | category
  users         segment: gender and age group (as for MovieLens 1m), else occupation
Tests: tests/unit/recsys_lib/data/test_atomic.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recsys_lib.data.movielens import gender_age_segments
from recsys_lib.errors import MissingInput
from recsys_lib.schema import (
    CATEGORIES_COL,
    EVENT_TYPE_COL,
    ITEM_COL,
    RATING_COL,
    SEGMENT_COL,
    TIMESTAMP_COL,
    TITLE_COL,
    USER_COL,
)

TITLE_FIELDS = ("movie_title", "title", "item_name", "name")
CATEGORY_FIELDS = ("class", "genre", "categories", "category")


def read_atomic(path: str | Path) -> pd.DataFrame:
    """One atomic file as a frame of strings, columns named without their ``:type``."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8")
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    return frame


def load(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(interactions, items, users or None) from a folder holding ``<name>.inter`` and ``<name>.item``."""
    folder = Path(folder)
    inter = sorted(folder.glob("*.inter"))
    if not inter:
        raise MissingInput(f"{folder}: no *.inter file (not a RecBole atomic dataset folder)")
    stem = inter[0].with_suffix("")
    item_file = stem.with_suffix(".item")
    if not item_file.exists():
        raise MissingInput(f"{item_file}: missing; the item tower needs item text")
    user_file = stem.with_suffix(".user")
    users = to_users(read_atomic(user_file)) if user_file.exists() else None
    return to_interactions(read_atomic(inter[0]), inter[0]), to_items(read_atomic(item_file), item_file), users


def to_interactions(inter: pd.DataFrame, source: Path | str = "interactions") -> pd.DataFrame:
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in inter]
    if missing:
        raise ValueError(f"{source}: no {', '.join(missing)} field; the pipeline needs who, what and when")
    out = pd.DataFrame({
        USER_COL: inter["user_id"],
        ITEM_COL: inter["item_id"],
        TIMESTAMP_COL: pd.to_numeric(inter["timestamp"]).astype("int64"),
        EVENT_TYPE_COL: "rating" if "rating" in inter else "interaction",
    })
    if "rating" in inter:
        out[RATING_COL] = pd.to_numeric(inter["rating"]).astype(float)
    return out


def to_items(item: pd.DataFrame, source: Path | str = "items") -> pd.DataFrame:
    title_field = next((f for f in TITLE_FIELDS if f in item), None)
    if title_field is None:
        raise ValueError(f"{source}: no title field (looked for {', '.join(TITLE_FIELDS)})")
    title = item[title_field].str.strip()
    if "release_year" in item:
        year = item["release_year"].str.strip()
        title = title.where(year == "", title + " (" + year + ")")
    out = pd.DataFrame({ITEM_COL: item["item_id"], TITLE_COL: title})
    category_field = next((f for f in CATEGORY_FIELDS if f in item), None)
    out[CATEGORIES_COL] = item[category_field].str.split().str.join("|") if category_field else ""
    return out


def to_users(user: pd.DataFrame) -> pd.DataFrame:
    if {"gender", "age"} <= set(user.columns):
        segment = gender_age_segments(user["gender"], user["age"])
    elif "occupation" in user:
        segment = user["occupation"]
    else:
        segment = pd.Series([None] * len(user), index=user.index, dtype=object)
    return pd.DataFrame({USER_COL: user["user_id"], SEGMENT_COL: segment})

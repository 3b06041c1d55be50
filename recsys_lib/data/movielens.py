"""MovieLens (GroupLens) files mapped onto the input contract.

Supports the CSV releases (latest-small, latest, 20m, 25m, 32m), the ``::`` releases (1m, 10m)
and 100k. ``download`` fetches a release for users who are online; the pipeline itself never
needs the network (the demo sample ships in ``data/movielens-latest-small``).
Ratings become interactions with ``event_type = "rating"``; genres become categories; tags are
the most used free-text tags of each movie. The releases with demographics (100k, 1m) also give
users, segmented by gender and age group (e.g. ``F-25``) for the cold-user fallback.
Tests: tests/unit/recsys_lib/data/test_movielens.py.
"""

from __future__ import annotations

import shutil
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_lib.errors import MissingInput
from recsys_lib.schema import (
    CATEGORIES_COL,
    EVENT_TYPE_COL,
    ITEM_COL,
    RATING_COL,
    SEGMENT_COL,
    TAGS_COL,
    TIMESTAMP_COL,
    TITLE_COL,
    USER_COL,
)
from recsys_lib.settings import PROJECT_ROOT

BUNDLED_SAMPLE = PROJECT_ROOT / "data" / "movielens-latest-small"
BASE_URL = "https://files.grouplens.org/datasets/movielens"
RELEASES = {
    "latest-small": "ml-latest-small",
    "latest": "ml-latest",
    "100k": "ml-100k",
    "1m": "ml-1m",
    "10m": "ml-10m100k",
    "20m": "ml-20m",
    "25m": "ml-25m",
    "32m": "ml-32m",
}
NO_GENRES = "(no genres listed)"
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]


def download(release: str, dest: str | Path) -> Path:
    """Download and unpack a MovieLens release; returns the folder holding its files."""
    if release not in RELEASES:
        raise MissingInput(f"unknown MovieLens release {release!r}; known: {', '.join(RELEASES)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{RELEASES[release]}.zip"
    if not archive.exists():
        tmp = archive.with_suffix(".part")
        url = f"{BASE_URL}/{archive.name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as e:  # URLError and socket timeouts are OSErrors
            raise MissingInput(f"could not download {url} ({getattr(e, 'reason', e)}); "
                               "unpack a release yourself and pass --source") from None  # fmt: skip
        tmp.rename(archive)
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)
        top = {Path(n).parts[0] for n in z.namelist()}
    (folder,) = top
    return dest / folder


def load(folder: str | Path, max_tags: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a MovieLens folder as (interactions, items) frames in the input contract."""
    folder = Path(folder)
    for ratings, movies in (("ratings.csv", "movies.csv"), ("ratings.dat", "movies.dat"), ("u.data", "u.item")):
        if (folder / ratings).exists() and not (folder / movies).exists():
            raise MissingInput(f"{folder}: {ratings} without {movies} (the items' titles and genres)")
    if (folder / "ratings.csv").exists():
        ratings = pd.read_csv(folder / "ratings.csv")
        movies = pd.read_csv(folder / "movies.csv")
        tags = pd.read_csv(folder / "tags.csv") if (folder / "tags.csv").exists() else None
    elif (folder / "ratings.dat").exists():
        ratings = _read_dat(folder / "ratings.dat", ["userId", "movieId", "rating", "timestamp"])
        movies = _read_dat(folder / "movies.dat", ["movieId", "title", "genres"])
        tags_file = folder / "tags.dat"
        tags = _read_dat(tags_file, ["userId", "movieId", "tag", "timestamp"]) if tags_file.exists() else None
    elif (folder / "u.data").exists():
        ratings = pd.read_csv(folder / "u.data", sep="\t", names=["userId", "movieId", "rating", "timestamp"])
        raw = pd.read_csv(folder / "u.item", sep="|", encoding="latin-1", header=None)
        flags = raw.iloc[:, 5:5 + len(ML100K_GENRES)].to_numpy()
        movies = pd.DataFrame({
            "movieId": raw[0],
            "title": raw[1],
            "genres": ["|".join(g for g, on in zip(ML100K_GENRES, row) if on) for row in flags],
        })
        tags = None
    else:
        raise MissingInput(f"{folder}: no ratings.csv, ratings.dat or u.data (not a MovieLens folder)")
    return to_interactions(ratings), to_items(movies, tags, max_tags)


# The age groups of the 1m release (lower bounds): under 18, 18-24, 25-34, ..., 56+.
AGE_GROUPS = (1, 18, 25, 35, 45, 50, 56)


def load_users(folder: str | Path) -> pd.DataFrame | None:
    """Users with a ``gender-age group`` segment, for the releases that have demographics; None
    for the others (the CSV releases have no user attributes)."""
    folder = Path(folder)
    if (folder / "users.dat").exists():
        raw = _read_dat(folder / "users.dat", ["userId", "gender", "age", "occupation", "zip"])
    elif (folder / "u.user").exists():
        raw = pd.read_csv(folder / "u.user", sep="|", names=["userId", "age", "gender", "occupation", "zip"])
    else:
        return None
    segments = gender_age_segments(raw["gender"], raw["age"])
    return pd.DataFrame({USER_COL: raw["userId"].astype(str), SEGMENT_COL: segments})


def gender_age_segments(gender: pd.Series, age: pd.Series) -> pd.Series:
    """``<gender>-<age group lower bound>`` per user, e.g. ``F-25``; unknown ages join the first group."""
    groups = np.asarray(AGE_GROUPS)
    years = pd.to_numeric(age, errors="coerce").fillna(groups[0]).to_numpy()
    group = groups[(np.searchsorted(groups, years, side="right") - 1).clip(min=0)]
    return gender.astype(str).str.upper() + "-" + pd.Series(group, index=gender.index).astype(str)


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    return pd.read_csv(path, sep="::", engine="python", names=names, encoding="latin-1")


def to_interactions(ratings: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        USER_COL: ratings["userId"].astype(str),
        ITEM_COL: ratings["movieId"].astype(str),
        TIMESTAMP_COL: ratings["timestamp"].astype("int64"),
        EVENT_TYPE_COL: "rating",
        RATING_COL: ratings["rating"].astype(float),
    })


def to_items(movies: pd.DataFrame, tags: pd.DataFrame | None, max_tags: int = 10) -> pd.DataFrame:
    genres = movies["genres"].fillna("").map(lambda g: "" if g == NO_GENRES else g)
    items = pd.DataFrame({
        ITEM_COL: movies["movieId"].astype(str),
        TITLE_COL: movies["title"].astype(str).str.strip(),
        CATEGORIES_COL: genres,
    })
    items[TAGS_COL] = ""
    if tags is not None and len(tags):
        t = tags.dropna(subset=["tag"]).assign(
            tag=lambda d: d["tag"].astype(str).str.strip().str.lower().str.replace("|", " ", regex=False),
            movieId=lambda d: d["movieId"].astype(str),
        )
        t = t[t["tag"] != ""]
        counts = t.groupby(["movieId", "tag"])["userId"].nunique().reset_index(name="n")
        counts = counts.sort_values(["movieId", "n", "tag"], ascending=[True, False, True])
        top = counts.groupby("movieId").head(max_tags).groupby("movieId")["tag"].agg("|".join)
        items[TAGS_COL] = items[ITEM_COL].map(top).fillna("")
    return items

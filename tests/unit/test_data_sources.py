import pandas as pd
import pytest

from recsys_lib.data import atomic, land_raw_drop, movielens, synthetic
from recsys_lib.schema import INTERACTIONS, ITEMS
from recsys_lib.storage import Storage


def test_bundled_movielens_sample_maps_onto_the_contract():
    interactions, items = movielens.load(movielens.BUNDLED_SAMPLE)
    assert len(interactions) == 100_004 and interactions["user_id"].nunique() == 671
    assert len(items) == 9_125
    assert set(INTERACTIONS.required) <= set(interactions.columns)
    assert set(ITEMS.required) <= set(items.columns)
    toy = items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["categories"] == "Adventure|Animation|Children|Comedy|Fantasy"
    assert "pixar" in toy["tags"].split("|")


def test_dat_release(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n2::10::3::978302109\n")
    (tmp_path / "movies.dat").write_text("10::GoldenEye (1995)::Action|Adventure|Thriller\n", encoding="latin-1")
    interactions, items = movielens.load(tmp_path)
    assert interactions.to_dict("list") == {
        "user_id": ["1", "2"],
        "item_id": ["10", "10"],
        "timestamp": [978300760, 978302109],
        "event_type": ["rating", "rating"],
        "rating": [5.0, 3.0],
    }
    assert items[["item_id", "title", "categories"]].values.tolist() == [
        ["10", "GoldenEye (1995)", "Action|Adventure|Thriller"]
    ]


def test_100k_release(tmp_path):
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n")
    flags = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)  # unknown, Action, Adventure, Animation, Children's, Comedy
    (tmp_path / "u.item").write_text(f"242|Kolya (1996)|24-Jan-1997||http://x|{flags}\n", encoding="latin-1")
    _, items = movielens.load(tmp_path)
    assert items.loc[0, "categories"] == "Comedy"


def test_movielens_users_segments(tmp_path):
    assert movielens.load_users(movielens.BUNDLED_SAMPLE) is None  # latest-small: no demographics
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    users = movielens.load_users(tmp_path)
    assert users.to_dict("list") == {"user_id": ["1", "2", "3"], "segment": ["F-1", "M-56", "M-25"]}
    (tmp_path / "users.dat").unlink()
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|12|M|student|32067\n")
    assert movielens.load_users(tmp_path)["segment"].tolist() == ["M-18", "F-50", "M-1"]


def test_not_a_movielens_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a MovieLens folder"):
        movielens.load(tmp_path)


def test_recbole_atomic_files(tmp_path):
    (tmp_path / "ml.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n"
    )
    (tmp_path / "ml.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy\n1\tToy Story\t1995\tAnimation Children's Comedy\n7\tUntitled\t\t\n"
    )
    (tmp_path / "ml.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\n196\t49\tM\twriter\n3\t0\tF\tnone\n"
    )
    interactions, items, users = atomic.load(tmp_path)
    assert interactions.to_dict("list") == {
        "user_id": ["196"],
        "item_id": ["242"],
        "timestamp": [881250949],
        "event_type": ["rating"],
        "rating": [3.0],
    }
    assert items.values.tolist() == [
        ["242", "Kolya (1996)", "Comedy"],
        ["1", "Toy Story (1995)", "Animation|Children's|Comedy"],
        ["7", "Untitled", ""],
    ]
    assert users.values.tolist() == [["196", "M-45"], ["3", "F-1"]]


def test_recbole_folder_without_items_names_the_missing_file(tmp_path):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n")
    with pytest.raises(FileNotFoundError, match="x.item: missing"):
        atomic.load(tmp_path)


def test_synthetic_is_seeded_and_in_the_contract():
    a = synthetic.generate(n_users=30, n_items=20, seed=3)
    b = synthetic.generate(n_users=30, n_items=20, seed=3)
    c = synthetic.generate(n_users=30, n_items=20, seed=4)
    pd.testing.assert_frame_equal(a[0], b[0])
    assert not a[0].equals(c[0])
    interactions, items = a
    assert interactions["user_id"].nunique() == 30 and len(items) == 20
    assert not interactions.duplicated(["user_id", "item_id"]).any()
    assert set(interactions["item_id"]) <= set(items["item_id"])
    data = synthetic.generate_dataset(n_users=30, n_items=20, seed=3, new_users=5)
    pd.testing.assert_frame_equal(data.interactions, interactions)  # users do not change the rest
    assert data.users["user_id"].tolist() == [f"u{i}" for i in range(35)]
    assert data.users["segment"].notna().all() and data.users["segment"].nunique() > 1


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_land_raw_drop_replaces_the_days_files(settings, fmt):
    storage = Storage(settings)
    interactions, items = synthetic.generate(10, 5, seed=0)
    land_raw_drop(storage, "2026-01-01", interactions, items, fmt="csv")
    written = land_raw_drop(storage, "2026-01-01", interactions, items, fmt=fmt)
    assert storage.work.list("raw/interactions/ds=2026-01-01/") == [
        f"raw/interactions/ds=2026-01-01/interactions.{fmt}"
    ]
    assert written["items"].endswith(f"items.{fmt}")

"""MovieLens releases (.csv, .dat, 100K) mapped onto the input contract."""

import pytest

from recsys_lib.data import movielens
from recsys_lib.errors import MissingInput
from recsys_lib.schema import INTERACTIONS, ITEMS


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
    with pytest.raises(MissingInput, match="not a MovieLens folder"):
        movielens.load(tmp_path)

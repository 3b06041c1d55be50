"""RecBole atomic files mapped onto the input contract."""

import pytest

from recsys_lib.data import atomic
from recsys_lib.errors import MissingInput


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
    with pytest.raises(MissingInput, match="x.item: missing"):
        atomic.load(tmp_path)

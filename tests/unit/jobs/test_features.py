"""The features stage on real Spark: empty inputs stop here with a message, not in training."""

import pytest

from jobs import features, ingest
from recsys_lib.errors import DataValidationError
from recsys_lib.storage import Storage

DS = "2026-01-02"


def ingest_drop(settings, items: bytes, events: str) -> None:
    """Land and ingest one day's drop: an items CSV and interactions CSV rows under a header."""
    storage = Storage(settings)
    storage.replace_raw_drop("items", DS, {"items.csv": items})
    storage.replace_raw_drop("interactions", DS, {"interactions.csv": events.encode()})
    ingest.run(settings, DS)


@pytest.mark.spark
def test_a_header_only_interactions_drop_stops_at_features(spark, settings):
    ingest_drop(settings, b"item_id,title\na,A\nb,B\n", "user_id,item_id,timestamp\n")
    with pytest.raises(DataValidationError, match=f"nothing to train on for {DS}: 0 positive training events"):
        features.run(settings, DS)


@pytest.mark.spark
def test_too_few_users_to_learn_from_stop_at_features(spark, settings):
    events = "".join(f"u{n % 2},{'abc'[n % 3]},{1767225600 + n}\n" for n in range(6))
    ingest_drop(settings, b"item_id,title\na,A\nb,B\nc,C\n", "user_id,item_id,timestamp\n" + events)
    expected = r"^too little to train on for 2026-01-02: 2 users and 3 items have positive training events, below"
    with pytest.raises(DataValidationError, match=expected):
        features.run(settings, DS)


@pytest.mark.spark
def test_events_that_are_all_weight_zero_leave_nothing_to_train_on(spark, settings):
    events = "".join(f"u{n},{'ab'[n % 2]},{1767225600 + n},0\n" for n in range(20))
    ingest_drop(settings, b"item_id,title\na,A\nb,B\n", "user_id,item_id,timestamp,weight\n" + events)
    with pytest.raises(DataValidationError, match=f"^nothing to train on for {DS}: 0 positive training events of 20 "):
        features.run(settings, DS)

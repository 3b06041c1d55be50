"""The features stage on real Spark: empty inputs stop here with a message, not in training."""

import pytest

from jobs import features, ingest
from recsys_lib.errors import DataValidationError
from recsys_lib.storage import Storage

DS = "2026-01-02"


@pytest.mark.spark
def test_a_header_only_interactions_drop_stops_at_features(spark, settings):
    storage = Storage(settings)
    storage.replace_raw_drop("items", DS, {"items.csv": b"item_id,title\na,A\nb,B\n"})
    storage.replace_raw_drop("interactions", DS, {"interactions.csv": b"user_id,item_id,timestamp\n"})
    ingest.run(settings, DS)
    with pytest.raises(DataValidationError, match=f"nothing to train on for {DS}: 0 positive training events"):
        features.run(settings, DS)

"""The transformer's cadence (train.finetune_every_days): a night between fine-tunings keeps the
champion's transformer, so only its new and edited items go through it, in train and in
embed_items alike; a night the cadence or full_retrain calls for fine-tunes it again."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from jobs.pipeline import MODEL_STAGES, run_all
from recsys_lib.data import land_raw_drop, synthetic
from recsys_lib.models.two_tower import TwoTowerModel
from recsys_lib.schema import CONTENT_HASH_COL
from recsys_lib.storage import FeatureTable, Storage
from recsys_lib.tracking import CANDIDATE, ENCODER_DS_TAG, Tracker
from tests.conftest import make_settings

pytestmark = pytest.mark.slow
NIGHT_STAGES = ("ingest", "features", "train", "embed_items")


def next_night(data: synthetic.SyntheticDataset, ds: str, edited: int, new: int):
    """(ds + 1, its interactions, its items drop): ``edited`` items with a new description and
    ``new`` new items, each new item rated by a few users that day."""
    night = (dt.date.fromisoformat(ds) + dt.timedelta(days=1)).isoformat()
    noon = int(pd.Timestamp(f"{night}T12:00:00Z").timestamp())
    changed = data.items.head(edited).assign(description=lambda f: f["description"] + " Now restored in 4K.",
                                             updated_at=noon)  # fmt: skip
    fresh = data.items.head(new).assign(item_id=[f"new{k}" for k in range(new)], updated_at=noon)
    users = data.interactions["user_id"].drop_duplicates().head(4)
    events = pd.DataFrame(
        [{"user_id": u, "item_id": i, "timestamp": noon + k, "event_type": "view", "rating": 4.0}
         for k, (u, i) in enumerate((u, i) for u in users for i in fresh["item_id"])]
    )  # fmt: skip
    return night, events, pd.concat([changed, fresh], ignore_index=True)


def test_a_night_between_fine_tunings_encodes_only_what_changed(tmp_path, tiny_encoder):
    overrides = {"model.encoder": str(tiny_encoder), "rules.min_segment_users": 2, "rank.min_users": 5,
                 "train.finetune_every_days": 2}  # fmt: skip
    settings = make_settings(tmp_path / "data", **overrides)
    storage, tracker = Storage(settings), Tracker(settings)
    data = synthetic.generate_dataset(n_users=40, n_items=40, interactions_per_user=8, seed=3)
    first = synthetic.last_day(data.interactions)
    land_raw_drop(storage, first, data.interactions, data.items)
    night1 = run_all(settings, first, stages=("ingest", "features", "train"))
    assert night1["train"]["fine_tuned"] == 1.0 and night1["train"]["encoder_ds"] == first
    # The pretrained transformer's outputs, computed as training started, are kept: evaluate's
    # search baseline (the pretrained encoder) reads them back rather than encode the catalogue.
    pretrained, _ = TwoTowerModel.from_encoder(str(tiny_encoder), 50, settings.model.max_length, 0.05)
    kept = storage.read_encoder_outputs(pretrained.encoder_fingerprint())
    documents = storage.read_features(FeatureTable.EVALUATION_DOCUMENTS, first)
    assert (kept.rows(documents[CONTENT_HASH_COL]) >= 0).all()
    night1 |= run_all(settings, first, stages=MODEL_STAGES)
    assert night1["publish"]["live"]

    second, events, items = next_night(data, first, edited=3, new=2)
    land_raw_drop(storage, second, events, items)
    night2 = run_all(settings, second, stages=NIGHT_STAGES)
    train, embed = night2["train"], night2["embed_items"]
    assert train["fine_tuned"] == 0.0 and train["encoder_ds"] == first  # within the cadence
    assert train["transformer_documents"] == 5, train  # the 3 edited and 2 new documents
    assert embed["items"] == 42 and embed["encoded"] == 0, embed  # train cached them all
    candidate = tracker.alias(CANDIDATE)
    assert candidate.tags[ENCODER_DS_TAG] == first
    served, _ = tracker.load_model(candidate)
    champion, _ = tracker.load_model(tracker.model_version(night1["train"]["model_version"]))
    assert served.encoder_fingerprint() == champion.encoder_fingerprint()

    third, events, items = next_night(data, second, edited=1, new=1)
    land_raw_drop(storage, third, events.assign(item_id="new9"), items.assign(item_id=["i0", "new9"]))
    night3 = run_all(settings, third, stages=("ingest", "features", "train"))
    assert night3["train"]["fine_tuned"] == 1.0 and night3["train"]["encoder_ds"] == third  # 2 days on
    retrain = run_all(settings, second, {"full_retrain": True}, stages=("train",))["train"]
    assert retrain["fine_tuned"] == 1.0 and retrain["warm_start"] == "none"

"""Layered, typed settings: defaults, profiles, files, environment, overrides, and bad values."""

import dataclasses

import pytest

from recsys_lib.errors import SettingsError
from recsys_lib.settings import load_settings


def test_defaults_resolve_data_root(tmp_path):
    s = load_settings(env={"RECSYS_DATA_ROOT": str(tmp_path)})
    assert s.profile == "local"
    assert s.storage.work_root == f"{tmp_path}/work"
    assert s.tracking.tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert s.storage.s3_endpoint_url is None
    assert s.features.min_positive_rating is None
    assert s.evaluate.k == (10, 20)


def test_environment_overrides_are_typed(tmp_path):
    s = load_settings(
        env={
            "RECSYS_DATA_ROOT": str(tmp_path),
            "RECSYS__TRAIN__MAX_STEPS": "7",
            "RECSYS__TRAIN__FULL_RETRAIN": "true",
            "RECSYS__FEATURES__MIN_POSITIVE_RATING": "3.5",
            "RECSYS__EVALUATE__K": "5,50",
        }
    )
    assert s.train.max_steps == 7
    assert s.train.full_retrain is True
    assert s.features.min_positive_rating == 3.5
    assert s.evaluate.k == (5, 50)


def test_layers_apply_in_order(tmp_path):
    config = tmp_path / "extra.toml"
    config.write_text("[recommend]\ntop_n = 7\nsimilar_n = 3\n")
    s = load_settings(
        config_file=config,
        env={"RECSYS_DATA_ROOT": str(tmp_path), "RECSYS__RECOMMEND__TOP_N": "8"},
        overrides={"recommend.similar_n": 2},
    )
    assert (s.recommend.top_n, s.recommend.similar_n) == (8, 2)


def test_cluster_profile(tmp_path):
    s = load_settings(profile="cluster", env={"RECSYS_DATA_ROOT": str(tmp_path)})
    assert s.spark.master.startswith("spark://")
    assert s.storage.publish_root.startswith("s3://")
    assert s.tracking.artifact_root is None
    assert s.train.device == "auto", "where the services are, not what hardware trains"


def test_profiles_stack_in_order(tmp_path):
    s = load_settings(profile="cluster,gpu", env={"RECSYS_DATA_ROOT": str(tmp_path)})
    assert s.spark.master.startswith("spark://") and s.train.device == "cuda" and s.model.user_layers == 1
    assert load_settings(profile="local, gpu", env={"RECSYS_DATA_ROOT": str(tmp_path)}).embed.device == "cuda"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RECSYS__TRAIN__MAX_STEPS": "many"}, "settings.train.max_steps: expected int"),
        ({"RECSYS__TRAIN__NO_SUCH_KEY": "1"}, "unknown key(s) no_such_key"),
        ({"RECSYS__TRAIN__FULL_RETRAIN": "perhaps"}, "expected bool"),
        ({"RECSYS__INDEX__KIND": "annoy"}, "settings.index.kind: expected one of auto, flat, hnsw, ivfpq, got 'annoy'"),
        ({"RECSYS__FEATURES__SPLIT": "random"}, "settings.features.split: expected one of auto, user_chrono"),
        ({"RECSYS__TRAIN__DEVICE": "gpu"}, "settings.train.device: expected one of auto, cpu, cuda"),
        ({"RECSYS__EVALUATE__K": ""}, "evaluate.k must list cut-offs of at least 1"),
        ({"RECSYS__RECOMMEND__TOP_N": "-3"}, "recommend.top_n must be at least 1, got -3"),
        ({"RECSYS__PUBLISH__KEEP_VERSIONS": "0"}, "publish.keep_versions must be at least 1, got 0"),
        ({"RECSYS__PUBLISH__MAX_NDCG_DROP": "nan"}, "publish.max_ndcg_drop must be at most 1, got nan"),
        ({"RECSYS__TRAIN__MAX_STEPS": "-5"}, "train.max_steps must be 0 or more, got -5"),
        ({"RECSYS__STORAGE__PUBLISH_ROOT": " "}, "storage.publish_root must be a directory or an s3:// URI"),
        ({"RECSYS__EVALUATE__BASELINES": "als,lightfm"}, "settings.evaluate.baselines: expected one of popularity"),
        ({"RECSYS__FEATURES__EVENT_WEIGHTS": "view=0.2,click"}, "expected event_type=weight (>= 0), got 'click'"),
        ({"RECSYS__INGEST__MAX_REJECT_FRACTION": "nan"}, "ingest.max_reject_fraction must be between 0 and 1, got nan"),
        ({"RECSYS__INGEST__MIN_TIMESTAMP": "yesterday"}, "ingest.min_timestamp must be an ISO-8601 date or time"),
        ({"RECSYS__RULES__DIVERSITY": "7"}, "rules.diversity must be between 0 and 1, got 7.0"),
        ({"RECSYS__RULES__MAX_PER_CATEGORY": "-3"}, "rules.max_per_category must be 0 or more, got -3"),
        ({"RECSYS__RULES__NEW_ITEM_BOOST": "nan"}, "rules.new_item_boost must be a finite number, got nan"),
    ],
)
def test_bad_values_name_the_key(tmp_path, env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env={"RECSYS_DATA_ROOT": str(tmp_path), **env})


def test_unknown_profile(tmp_path):
    with pytest.raises(SettingsError, match="unknown profile 'staging'.*cluster, gpu, local"):
        load_settings(profile="cluster,staging", env={"RECSYS_DATA_ROOT": str(tmp_path)})


def test_with_overrides_returns_a_new_frozen_object(tmp_path):
    s = load_settings(env={"RECSYS_DATA_ROOT": str(tmp_path)})
    t = s.with_overrides({"recommend.top_n": "3"})
    assert t.recommend.top_n == 3 and s.recommend.top_n == 20
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.recommend.top_n = 4

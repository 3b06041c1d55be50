"""Publishing through a faulty network to a real S3 server: resets, 5xx and slow answers
injected by a proxy on loopback (tests/faults.py). Retried faults still publish the exact bytes;
an outage at any request leaves the previous version live."""

import itertools

import pytest

from recsys_lib import publish as pub
from recsys_lib.errors import StorageError
from recsys_lib.reader import PublishedTables
from recsys_lib.recommend import item_similar_table, user_topn_table
from recsys_lib.settings import load_settings
from recsys_lib.storage import S3Store, Storage
from tests.faults import RESET, SLOW, UNAVAILABLE, FaultyProxy, every, from_request

pytestmark = pytest.mark.s3


def tables(top_item: str) -> dict:
    users, ranks, items = ["u1", "u1", "u2"], [1, 2, 1], [top_item, "c", "a"]
    return {
        "user_topn": user_topn_table(users, ranks, items, [0.9, 0.8, 0.7], "m/1", "2026-01-01"),
        "item_similar": item_similar_table(["a", "b"], [1, 1], ["b", "a"], [0.5, 0.5], "m/1", "2026-01-01"),
    }


def test_a_publish_through_a_flaky_network_completes_with_the_exact_bytes(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    with FaultyProxy(endpoint, every(2), slow_s=1.0) as proxy:
        # The client's retries and timeouts come from settings, as in production.
        settings = load_settings(
            env={"RECSYS_DATA_ROOT": str(tmp_path)},
            overrides={"storage.publish_root": f"s3://{bucket}/published", "storage.s3_endpoint_url": proxy.url,
                       "storage.s3_max_attempts": "4", "storage.s3_read_timeout_s": "0.3"},  # fmt: skip
        )
        manifest = pub.publish_version(Storage(settings).published, "2026-01-01", tables("b"), "m/1", {})
    assert {RESET, UNAVAILABLE, SLOW} <= set(proxy.faults)
    direct = S3Store(f"s3://{bucket}/published", endpoint_url=endpoint)
    assert pub.verify_version(direct, manifest) == []
    reader = PublishedTables(direct)
    assert reader.manifest()["version"] == manifest["version"]
    assert reader.recommendations_for("u1")["item_id"].tolist() == ["b", "c"]


def test_an_outage_at_any_request_of_a_publish_leaves_the_previous_version_live(s3_bucket):
    endpoint, bucket = s3_bucket
    for first in itertools.count():
        assert first < 200, "a clean publish should need far fewer requests"
        root = f"s3://{bucket}/attempt-{first}"
        direct = S3Store(root, endpoint_url=endpoint)
        old = pub.publish_version(direct, "2026-01-01", tables("b"), "m/1", {})
        fault = (RESET, UNAVAILABLE)[first % 2]
        with FaultyProxy(endpoint, from_request(first, fault)) as proxy:
            flaky = S3Store(root, endpoint_url=proxy.url, max_attempts=2, timeouts_s=(1.0, 1.0))
            try:
                new = pub.publish_version(flaky, "2026-01-02", tables("d"), "m/2", {})
            except Exception:  # botocore's error after its retries: the run fails and is retried
                new = None
        live = PublishedTables(direct)
        if new is None:
            assert live.manifest()["version"] == old["version"], f"outage from request {first}"
            assert live.recommendations_for("u1")["item_id"].tolist() == ["b", "c"]
        else:
            assert live.manifest()["version"] == new["version"]
            assert pub.verify_version(direct, new) == []
            if not proxy.faults:  # the outage began after the last request: every cut was tried
                break


def test_a_bucket_that_cannot_be_used_is_one_line_before_any_work(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    S3Store(f"s3://{bucket}/out", endpoint_url=endpoint).check_reachable()
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket/out: no such bucket$"):
        S3Store("s3://no-such-bucket/out", endpoint_url=endpoint).check_reachable()
    with FaultyProxy(endpoint, from_request(0)) as proxy:  # a server that answers nothing but 503
        flaky = S3Store(f"s3://{bucket}/out", endpoint_url=proxy.url, max_attempts=2)
        with pytest.raises(StorageError, match=rf"^s3://{bucket}/out: the server answered 503 "):
            flaky.check_reachable()

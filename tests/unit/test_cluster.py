"""The cluster store URL of `cnetd --cluster-store`."""

from __future__ import annotations

import pytest
from cnet.cnm.cluster import parse_cluster_store


def test_one_or_more_members():
    assert parse_cluster_store("etcd://10.0.0.1:2379") == ["10.0.0.1:2379"]
    assert parse_cluster_store("etcd://a:2379,b:2379, c:2380/") == ["a:2379", "b:2379",
                                                                    "c:2380"]


@pytest.mark.parametrize("url, reason", [
    ("10.0.0.1:2379", "unsupported cluster store"),
    ("consul://10.0.0.1:8500", "unsupported cluster store"),
    ("etcd://", "names no endpoint"),
    ("etcd://10.0.0.1", "invalid etcd endpoint"),
    ("etcd://10.0.0.1:99999", "invalid etcd endpoint"),
    ("etcd://:2379", "invalid etcd endpoint"),
])
def test_bad_urls_say_why(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse_cluster_store(url)

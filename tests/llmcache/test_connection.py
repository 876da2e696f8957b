"""``llmcache.connection``: which client a URL gives, and what a cluster URL carries."""

from __future__ import annotations

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from llmcache import connection
from llmcache.errors import ConfigError


def test_plain_urls_give_a_single_node_client() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380/2"):
        assert not connection.is_cluster_url(url)
        assert isinstance(connection.connect(url), redis.asyncio.Redis)


def test_cluster_url_seeds_credentials_and_tls_options() -> None:
    url = "rediss+cluster://cache:p%40ss@h1:7000,h2:7001?ssl_ca_certs=/etc/ca.crt"
    assert connection.is_cluster_url(url)
    client = connection.connect(url, socket_timeout=3)
    assert isinstance(client, RedisCluster)
    nm = client.nodes_manager
    assert sorted(nm.startup_nodes) == ["h1:7000", "h2:7001"]
    kw = nm.connection_kwargs
    assert (kw["username"], kw["password"], kw["ssl_ca_certs"]) == ("cache", "p@ss", "/etc/ca.crt")
    assert issubclass(kw["connection_class"], redis.asyncio.SSLConnection)
    assert kw["socket_timeout"] == 3
    plain = connection.connect("redis+cluster://h1:7000").nodes_manager.connection_kwargs
    assert not issubclass(plain["connection_class"], redis.asyncio.SSLConnection)


def test_cluster_url_errors_say_what_to_write() -> None:
    with pytest.raises(ConfigError, match="only database 0"):
        connection.connect("redis+cluster://h1:7000/2")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        connection.connect("redis+cluster://h1:notaport")


def test_redact_hides_the_password() -> None:
    assert connection.redact("rediss+cluster://u:secret@h:1,h2:2") == "rediss+cluster://u:***@h:1,h2:2"
    assert connection.redact("redis://h:1/0") == "redis://h:1/0"

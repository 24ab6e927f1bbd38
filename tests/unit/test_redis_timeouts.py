"""The fast Redis store's client (stores/fast_redis.py, stores/_compat.py): socket timeouts
unless the connection string sets its own, and no redis-py retries of its own (StoreRetry
retries), so one store attempt is one try against Redis, bounded by the timeout.

No redis-server: building a client does not connect; the timing tests use a loopback port
that accepts connections and never answers (a frozen Redis) and one that refuses them.
"""

from __future__ import annotations

import socket
import time

import pytest
import redis.exceptions

from feast_bytewax.stores.fast_redis import (
    DEFAULT_SOCKET_TIMEOUT_S,
    FastRedisOnlineStore,
    FastRedisOnlineStoreConfig,
)
from tests.support.tcp import LoopbackServer


def client_of(connection_string: str, **config):
    store = FastRedisOnlineStore()
    cfg = FastRedisOnlineStoreConfig(connection_string=connection_string, **config)
    return store, cfg, store._get_client(cfg)


def settings(client) -> tuple:
    kwargs = client.connection_pool.connection_kwargs
    return (kwargs.get("socket_timeout"), kwargs.get("socket_connect_timeout"),
            kwargs["retry"].get_retries())


def test_default_client_has_timeouts_and_no_retries() -> None:
    store, cfg, client = client_of("127.0.0.1:6399")
    assert DEFAULT_SOCKET_TIMEOUT_S == 5.0
    assert settings(client) == (5.0, 5.0, 0)
    conn = client.connection_pool.make_connection()  # what every pooled connection gets
    assert conn.socket_timeout == 5.0 and conn.socket_connect_timeout == 5.0
    assert conn.retry.get_retries() == 0
    # one client per store (Feast's cache), and Feast's parser is not left shadowed
    assert store._get_client(cfg) is client is store._client
    assert "_parse_connection_string" not in vars(store)


def test_the_connection_string_wins() -> None:
    _, _, client = client_of("127.0.0.1:6399,socket_timeout=2,socket_connect_timeout=1.5")
    assert settings(client) == (2, 1.5, 0)
    _, _, client = client_of("127.0.0.1:6399,socket_timeout=2")
    assert settings(client) == (2, 5.0, 0)


def test_socket_timeout_s_is_the_default_and_null_turns_it_off() -> None:
    _, _, client = client_of("127.0.0.1:6399", socket_timeout_s=0.75)
    assert settings(client) == (0.75, 0.75, 0)
    _, _, client = client_of("127.0.0.1:6399", socket_timeout_s=None)
    assert settings(client) == (None, None, 0)  # no timeout, still no redis-py retries


def test_sentinel_clients_get_them_too() -> None:
    _, _, client = client_of("127.0.0.1:26399", redis_type="redis_sentinel",
                             sentinel_master="mymaster")
    assert settings(client) == (5.0, 5.0, 0)
    sentinels = client.connection_pool.sentinel_manager.sentinel_kwargs
    assert sentinels["socket_timeout"] == 5.0 and sentinels["socket_connect_timeout"] == 5.0


def test_feasts_own_store_is_left_alone() -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig

    client_of("127.0.0.1:6399")
    stock = RedisOnlineStore()._get_client(
        RedisOnlineStoreConfig(connection_string="127.0.0.1:6399"))
    kwargs = stock.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] is None and kwargs["retry"].get_retries() == 3


@pytest.fixture
def silent_server():
    server = LoopbackServer(close_at_once=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_frozen_redis_fails_one_try_after_the_timeout(silent_server) -> None:
    _, _, client = client_of(f"127.0.0.1:{silent_server.port}", socket_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError), client.pipeline(
            transaction=False) as pipe:
        pipe.hset("k", "f", "v")
        pipe.execute()
    took = time.monotonic() - started
    assert 0.4 <= took < 2.0, took  # one timeout, not 4 plus redis-py's backoff
    assert len(silent_server.accepted) == 1


def test_a_redis_that_is_down_fails_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    _, _, client = client_of(f"127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()
    assert time.monotonic() - started < 1.0  # no redis-py retries with backoff

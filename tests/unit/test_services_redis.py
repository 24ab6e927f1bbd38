"""tests/services.py: a missing redis-server fails with the install command."""

from __future__ import annotations

import pytest

from tests import services


def test_missing_redis_server_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    monkeypatch.setattr(services.os, "access", lambda path, mode: False)
    with pytest.raises(RuntimeError, match=r"apt-get install -y redis-server"):
        services.find_redis_server()


def test_explicit_binary_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SERVER_BIN", "/nonexistent/redis-server")
    with pytest.raises(RuntimeError, match="REDIS_SERVER_BIN"):
        services.find_redis_server()


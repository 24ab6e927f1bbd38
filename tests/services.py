"""Real services for tests, each on a free loopback port, started and stopped by the tests.

Sections are independent (each has its own helpers and fixtures); tests/conftest.py imports
the fixtures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# ---------------------------------------------------------------------------------------
# Redis (online store) and moto S3 (offline store): real servers as subprocesses
# ---------------------------------------------------------------------------------------

REDIS_INSTALL_HINT = (
    "apt-get update && apt-get install -y redis-server   (Debian/Ubuntu, as root; "
    "macOS: brew install redis). Or point REDIS_SERVER_BIN at a redis-server binary."
)
REDIS_START_TIMEOUT_S = 10.0
MOTO_START_TIMEOUT_S = 30.0


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; callers retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate a child we started; kill it if it does not exit in `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def find_redis_server() -> str:
    """Path of a `redis-server` binary: $REDIS_SERVER_BIN, else PATH, else the usual places.

    Raises RuntimeError telling how to install it when there is none.
    """
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise RuntimeError(f"REDIS_SERVER_BIN={explicit!r} is not an executable file")
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server",
                      "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    if _install_redis_server():
        return find_redis_server()
    raise RuntimeError(
        "redis-server not found (needed by the Redis online-store tests). Install it: "
        + REDIS_INSTALL_HINT
    )


def _install_redis_server() -> bool:
    """The test session installs Debian's redis-server itself when it can (root + apt-get):
    a fresh machine must pass without a manual step. False when it cannot."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0 or shutil.which("redis-server"):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("redis-server missing: installing it with apt-get (Debian package redis-server)",
          file=sys.stderr)
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "redis-server"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            return False
    return shutil.which("redis-server") is not None or os.access("/usr/bin/redis-server", os.X_OK)


@dataclass
class RedisServer:
    """A running redis-server we own."""

    host: str
    port: int
    process: subprocess.Popen

    @property
    def connection_string(self) -> str:
        """Feast's `online_store.connection_string` (host:port)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)

    def flushall(self) -> None:
        with contextlib.closing(self.client()) as c:
            c.flushall()


def start_redis(timeout: float = REDIS_START_TIMEOUT_S, attempts: int = 3) -> RedisServer:
    """Start `redis-server` on a free loopback port, no persistence; return once it PINGs.

    Retries on a new port if the chosen one was taken in between (the server exits).
    """
    import redis

    binary = find_redis_server()
    last_error = ""
    for _ in range(attempts):
        port = free_loopback_port()
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5,
                             socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    last_error = process.stdout.read().decode(errors="replace")[-2000:]
                    break
                try:
                    if client.ping():
                        return RedisServer("127.0.0.1", port, process)
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
            else:
                last_error = f"no PING reply within {timeout:.0f}s"
        finally:
            client.close()
        _stop(process)
    raise RuntimeError(f"redis-server did not start: {last_error}")


def stop_redis(server: RedisServer) -> None:
    _stop(server.process)
    if server.process.stdout is not None:
        server.process.stdout.close()


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        stop_redis(server)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session on a free 127.0.0.1 port (not 6379), no persistence.
    Fails with the install command when `redis-server` is missing."""
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_clean(redis_server: RedisServer) -> RedisServer:
    """The session's redis-server, emptied (FLUSHALL) before the test."""
    redis_server.flushall()
    return redis_server


# -- moto S3 ----------------------------------------------------------------------------

MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class MotoServer:
    """A running standalone moto server (S3 API) we own."""

    endpoint: str
    process: subprocess.Popen

    def s3(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=MOTO_CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )


def start_moto(timeout: float = MOTO_START_TIMEOUT_S, attempts: int = 3) -> MotoServer:
    """`python -m moto.server -H 127.0.0.1 -p PORT` on a free port; return once it answers."""
    import urllib.error
    import urllib.request

    last_error = ""
    for _ in range(attempts):
        port = free_loopback_port()
        endpoint = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **MOTO_CREDENTIALS},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                last_error = process.stdout.read().decode(errors="replace")[-2000:]
                break
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    return MotoServer(endpoint, process)
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        else:
            last_error = f"no HTTP answer within {timeout:.0f}s"
        _stop(process)
    raise RuntimeError(f"moto server did not start: {last_error}")


def stop_moto(server: MotoServer) -> None:
    _stop(server.process)
    if server.process.stdout is not None:
        server.process.stdout.close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A standalone moto S3 server for the session on a free 127.0.0.1 port."""
    pytest.importorskip("moto.server")
    server = start_moto()
    try:
        yield server
    finally:
        stop_moto(server)


# ---------------------------------------------------------------------------------------
# Kafka: librdkafka's mock cluster (in-process, real protocol on loopback)
# ---------------------------------------------------------------------------------------


@dataclass
class KafkaMockCluster:
    """A librdkafka mock cluster owned by an in-process producer (keep it alive).

    Auto-created topics get 4 partitions; each partition keeps only ~5 MiB (older messages
    vanish), so keep test topics small. Use a fresh topic per test (`new_topic`).
    """

    bootstrap: str
    owner: object  # the confluent_kafka.Producer whose mock cluster this is

    def producer(self, **config):
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, **config})

    def new_topic(self, prefix: str = "t") -> str:
        """A unique topic name, created (with 4 partitions) by a metadata request."""
        import uuid

        from confluent_kafka.admin import AdminClient

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        md = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(name, timeout=10)
        if name not in md.topics or md.topics[name].error is not None:
            raise RuntimeError(f"mock cluster did not create topic {name!r}")
        return name

    def produce(self, topic: str, items, timeout: float = 30.0) -> list[tuple[int, int]]:
        """Produce ``(key, value, partition_or_None)`` items in order; return each one's
        (partition, offset), in the same order. Fails if any delivery fails."""
        producer = self.producer()
        results: list[tuple[int, int]] = []
        delivered: dict[int, tuple] = {}

        def on_delivery(i):
            def cb(err, msg):
                delivered[i] = (err, msg.partition(), msg.offset())
            return cb

        n = 0
        for i, (key, value, partition) in enumerate(items):
            kwargs = {} if partition is None else {"partition": partition}
            while True:
                try:
                    producer.produce(topic, key=key, value=value, on_delivery=on_delivery(i),
                                     **kwargs)
                    break
                except BufferError:
                    producer.poll(0.1)
            n += 1
        left = producer.flush(timeout)
        if left:
            raise RuntimeError(f"{left} messages not delivered to {topic!r}")
        for i in range(n):
            err, part, offset = delivered[i]
            if err is not None:
                raise RuntimeError(f"delivery to {topic!r} failed: {err}")
            results.append((part, offset))
        return results


def start_kafka_mock(brokers: int = 1, timeout: float = 10.0) -> KafkaMockCluster:
    from confluent_kafka import Producer

    owner = Producer({"test.mock.num.brokers": brokers, "log_level": 3})
    md = owner.list_topics(timeout=timeout)
    broker = next(iter(md.brokers.values()))
    return KafkaMockCluster(f"{broker.host}:{broker.port}", owner)


@pytest.fixture(scope="session")
def kafka_mock() -> Iterator[KafkaMockCluster]:
    """One librdkafka mock Kafka cluster for the session (bootstrap on 127.0.0.1)."""
    cluster = start_kafka_mock()
    try:
        yield cluster
    finally:
        cluster.owner.flush(1)
        del cluster.owner


# -- feast serve --------------------------------------------------------------------------

FEAST_SERVE_TIMEOUT_S = 120.0


@dataclass
class FeastServer:
    """A running `feast serve` (gunicorn master + workers, in their own process group)."""

    url: str
    process: subprocess.Popen
    log_path: str

    def log_tail(self, chars: int = 4000) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()[-chars:]


def feast_executable() -> str:
    """The `feast` CLI of this interpreter's environment."""
    candidate = os.path.join(os.path.dirname(sys.executable), "feast")
    return candidate if os.access(candidate, os.X_OK) else (shutil.which("feast") or "feast")


def start_feast_serve(repo: str | os.PathLike, env: dict[str, str] | None = None,
                      timeout: float = FEAST_SERVE_TIMEOUT_S) -> FeastServer:
    """`feast -c REPO serve -h 127.0.0.1 -p PORT` on a free port; returns once GET /health
    answers 200 (it takes ~10 s). The server's output goes to REPO/feast_serve.log."""
    import urllib.error
    import urllib.request

    log_path = os.path.join(os.fspath(repo), "feast_serve.log")
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [feast_executable(), "-c", os.fspath(repo), "serve", "-h", "127.0.0.1",
             "-p", str(port), "--no-access-log", "--workers", "1"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
    server = FeastServer(url, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"feast serve exited with {process.returncode}:\n"
                               + server.log_tail())
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    stop_feast_serve(server)
    raise RuntimeError(f"feast serve not ready within {timeout:.0f}s:\n" + server.log_tail())


def stop_feast_serve(server: FeastServer, timeout: float = 15.0) -> None:
    """SIGTERM to the server's process group (master and its workers), SIGKILL to the group
    if the master lingers. The group is the one `start_feast_serve` created (its id is the
    master's pid) and is only signalled while the master is alive."""
    import signal

    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout)


@contextlib.contextmanager
def running_feast_serve(repo: str | os.PathLike, env: dict[str, str] | None = None,
                        ) -> Iterator[FeastServer]:
    server = start_feast_serve(repo, env)
    try:
        yield server
    finally:
        stop_feast_serve(server)

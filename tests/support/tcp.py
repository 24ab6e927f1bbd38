"""Fake Redis endpoints on loopback for store-outage tests: a port that accepts
connections and then either never answers (a frozen Redis: the kernel still accepts) or
closes them at once (a Redis going away). `accepted` holds every connection taken, so a
test can count how many tries one store attempt made."""

from __future__ import annotations

import socket
import threading


class LoopbackServer(threading.Thread):
    """Accepts connections until `stop()`; `close_at_once`: close each right away."""

    def __init__(self, close_at_once: bool) -> None:
        super().__init__(name="fake-redis", daemon=True)
        self.close_at_once = close_at_once
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)
            if self.close_at_once:
                conn.close()
        for conn in self.accepted:
            conn.close()
        self.sock.close()

    def stop(self) -> None:
        self.done.set()
        self.join(5)

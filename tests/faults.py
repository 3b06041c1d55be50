"""A fault-injecting HTTP proxy for the S3 server on loopback.

The pipeline's S3 client talks to the proxy as if it were the server; the proxy forwards each
request to the real server (moto) unless the schedule says otherwise. Faults are what a network
and a busy object store do: a connection reset before any answer, a 5xx, or a slow answer (the
server did the work, the reply comes after the client's read timeout). Used by the fault tests
only: no mock stands in for the server, which stores and returns real bytes.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

RESET, UNAVAILABLE, SLOW = "reset", "503", "slow"
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def every(n: int, faults=(RESET, UNAVAILABLE, SLOW)) -> Callable[[int, str, str], str | None]:
    """A schedule: every n-th request fails, cycling through ``faults``."""

    def schedule(number: int, method: str, path: str) -> str | None:
        return faults[(number // n) % len(faults)] if number % n == n - 1 else None

    return schedule


def from_request(first: int, fault: str = UNAVAILABLE) -> Callable[[int, str, str], str | None]:
    """A schedule: the store answers the first ``first`` requests, then none (an outage)."""
    return lambda number, method, path: fault if number >= first else None


class FaultyProxy:
    """``with FaultyProxy(upstream, schedule) as proxy:`` point a client at ``proxy.url``."""

    def __init__(self, upstream: str, schedule: Callable[[int, str, str], str | None], slow_s: float = 1.5):
        self.upstream = urlparse(upstream)
        self.schedule = schedule
        self.slow_s = slow_s
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, fault)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def faults(self) -> list[str]:
        return [f for _, _, f in self.requests if f]

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            fault = self.schedule(len(self.requests), method, path)
            self.requests.append((method, path, fault))
            return fault

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                fault = proxy._decide(self.command, self.path)
                if fault == RESET:  # no answer at all: the peer sees a connection reset
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault == UNAVAILABLE:
                    self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        upstream.putheader(name, value)
                upstream.putheader("Content-Length", str(len(body)))
                upstream.endheaders(body)
                response = upstream.getresponse()
                data = response.read()
                hop_by_hop = ("transfer-encoding", "connection")
                headers = {k: v for k, v in response.getheaders() if k.lower() not in hop_by_hop}
                upstream.close()
                if fault == SLOW:  # the work is done; the answer comes too late
                    time.sleep(proxy.slow_s)
                self._reply(response.status, headers, data)

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        if name.lower() != "content-length":
                            self.send_header(name, value)
                    # A HEAD answer carries the object's length without the object.
                    length = headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up waiting

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler

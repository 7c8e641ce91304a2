"""Fixtures for incident tests: a meta store, a clock tests move by hand, an HTTP receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from stackwatch.incidents.service import IncidentConfig, IncidentService
from stackwatch.storage.meta import MetaStore

T0 = datetime(2025, 11, 17, 3, 0, tzinfo=UTC)  # a Monday, 03:00 UTC: somebody's night


class Clock:
    """An aware UTC clock that only moves when told to."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


class Receiver:
    """A real HTTP server on loopback that records every JSON body posted to it."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with lock:
                    outer.requests.append((self.path, body))
                    failing = outer.fail_first > 0
                    if failing:
                        outer.fail_first -= 1
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def meta(meta_url: str) -> Iterator[MetaStore]:
    """A migrated meta store: SQLite, then PostgreSQL (the root conftest's ``meta_url``)."""
    store = MetaStore(meta_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def service(meta: MetaStore, clock: Clock) -> IncidentService:
    return IncidentService(meta, clock=clock, config=IncidentConfig(), base_url="http://stackwatch.test")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()

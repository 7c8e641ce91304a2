"""Limits with clear errors: the per-project series limit on ingest, max samples and the timeout on query.

These run the real app in this process over a runtime whose settings carry small limits
(``metrics_max_series``, ``query_max_samples``), which the server reads from its settings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stackwatch.config import load_settings
from stackwatch.server.app import create_app
from stackwatch.server.runtime import Runtime

ADMIN = "swa_limits_admin_token_0123456789"
INGEST = "swi_limits_ingest_token_0123456789"


class _Settings:
    """The loaded settings plus the limits under test."""

    def __init__(self, base: Any, **extra: Any) -> None:
        self._base = base
        self.__dict__.update(extra)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


@pytest.fixture
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("limits") / "data"  # a fresh store per test: limits are per project
    base = load_settings(env={}, data_dir=str(data), admin_token=ADMIN, ingest_token=INGEST, pipeline_workers=0)
    settings = _Settings(base, metrics_max_series=5, query_max_samples=1000)
    rt = Runtime.open(settings)
    try:
        yield TestClient(create_app(settings, runtime=rt))
    finally:
        rt.close()


def _import(client: TestClient, text: str) -> Any:
    return client.post("/api/v1/import/prometheus", content=text, headers={"Authorization": f"Bearer {INGEST}"})


def _wait(client: TestClient, query: str, expected: str) -> None:
    deadline = time.monotonic() + 15
    value = None
    while time.monotonic() < deadline:
        r = client.get("/api/v1/query", params={"query": query}, headers={"Authorization": f"Bearer {ADMIN}"})
        result = r.json()["data"]["result"]
        value = result[0]["value"][1] if result else None
        if value == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{query} = {value}, wanted {expected}")


def test_series_limit_refuses_new_series_with_a_clear_400(client: TestClient) -> None:
    assert _import(client, "".join(f"limited{{i=\"{i}\"}} 1\n" for i in range(4))).status_code == 204
    r = _import(client, "".join(f"limited{{i=\"{i}\"}} 2\n" for i in range(8)))
    assert r.status_code == 400
    assert "series limit of 5 per project reached: 3 new series (3 samples) refused" in r.json()["error"]
    # Known series and the one that still fit were stored.
    _wait(client, "count(limited == 2)", "5")


def test_max_samples_and_timeout(client: TestClient) -> None:
    now = int(time.time())
    lines = "".join(f"many {i} {(now - 2000 + i) * 1000}\n" for i in range(2000))
    assert _import(client, lines).status_code == 204
    _wait(client, "timestamp(many)", str(now - 1))
    r = client.get("/api/v1/query", params={"query": "many[1h]"}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 422
    assert r.json()["errorType"] == "execution"
    assert "too many samples" in r.json()["error"]
    r = client.get("/api/v1/query_range", params={"query": "sum(rate(many[5m]))", "start": now - 3600, "end": now,
                                                  "step": "1", "timeout": "0.000001"},
                   headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 503 and r.json()["errorType"] == "timeout"


def test_max_samples_bounds_what_a_query_holds_at_once(client: TestClient) -> None:
    """As Prometheus counts: a function lets its selection go once it has its result."""
    now = int(time.time())
    lines = "".join(f"{name} {i} {(now - 1000 + i) * 1000}\n" for name in ("half_a", "half_b") for i in range(700))
    lines += "".join(f"too_big {i} {(now - 1500 + i) * 1000}\n" for i in range(1200))
    assert _import(client, lines).status_code == 204
    headers = {"Authorization": f"Bearer {ADMIN}"}
    # stddev_over_time reads the samples (count_over_time and the like are aggregated in storage).
    both = "sum(stddev_over_time(half_a[1h])) + sum(stddev_over_time(half_b[1h]))"
    _wait(client, f"round({both})", "404")  # 700 + 700 samples read, never more than 1,000 held at once
    r = client.get("/api/v1/query", params={"query": "stddev_over_time(too_big[1h])"}, headers=headers)
    assert r.status_code == 422 and "too many samples" in r.json()["error"]
    # One selection of both series is 1,400 samples held together.
    r = client.get("/api/v1/query", params={"query": 'stddev_over_time({__name__=~"half_.*"}[1h])'}, headers=headers)
    assert r.status_code == 422 and "too many samples" in r.json()["error"]
    # Aggregated in storage, a window's samples are never held here: no limit to reach.
    _wait(client, "count_over_time(too_big[1h])", "1200")

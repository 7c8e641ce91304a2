"""Helpers shared by the web integration tests (test_web_*.py, test_prefork.py)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.health import HealthRegistry
from stackwatch.sdk.metrics import RequestMetrics

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Web:
    """One SDK set-up for a test: its own prometheus registry, so tests never share counts."""

    config: SDKConfig
    health: HealthRegistry
    metrics: RequestMetrics

    @property
    def deps(self) -> tuple[SDKConfig, HealthRegistry, RequestMetrics]:
        return self.config, self.health, self.metrics

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse(self.metrics.prometheus_text()[0].decode())

    def requests(self, **labels: str) -> float:
        """Sum of http_requests_total over the series matching ``labels``."""
        total = 0.0
        for (name, series), value in self.samples().items():
            if name == "http_requests_total" and labels.items() <= dict(series).items():
                total += value
        return total

    def routes(self) -> set[str]:
        return {dict(series)["route"] for (name, series) in self.samples() if name == "http_requests_total"}


def make_web(**settings: Any) -> Web:
    settings.setdefault("service", "crm")
    settings.setdefault("version", "1.4.2")
    settings.setdefault("health_cache_seconds", 0)
    config = SDKConfig(**settings)
    return Web(config, HealthRegistry(config), RequestMetrics(config, CollectorRegistry()))


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

"""Enrich stage: service mapping, user agents, GeoIP from a MaxMind DB written here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipeline_mmdb import write_mmdb

from stackwatch.pipeline.enrich import EnrichConfig, Enricher
from stackwatch.pipeline.stage import ERROR_ATTRIBUTE, BatchContext

CTX = BatchContext("proj", 1, {})
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1"
)


def record(service: str = "unknown", host: str = "", source: str = "", **attributes: Any) -> dict[str, Any]:
    return {"service": service, "host": host, "source": source, "attributes": dict(attributes)}


def test_user_agent_fields() -> None:
    enricher = Enricher()
    desktop = record(**{"http.user_agent": CHROME})
    phone = record(**{"user_agent.original": IPHONE})
    bot = record(**{"http.user_agent": "curl/8.4.0"})
    enricher([desktop, phone, bot], CTX)
    assert desktop["attributes"] == {
        "http.user_agent": CHROME,
        "user_agent.browser": "Chrome",
        "user_agent.browser_version": "120.0",
        "user_agent.os": "Windows",
        "user_agent.os_version": "10",
    }
    assert phone["attributes"]["user_agent.browser"] == "Mobile Safari"
    assert phone["attributes"]["user_agent.os"] == "iOS"
    assert phone["attributes"]["user_agent.device"] == "iPhone"
    assert bot["attributes"] == {
        "http.user_agent": "curl/8.4.0",
        "user_agent.browser": "curl",
        "user_agent.browser_version": "8.4",
    }


def test_user_agent_results_are_cached() -> None:
    enricher = Enricher()
    enricher([record(**{"http.user_agent": CHROME}) for _ in range(50)], CTX)
    info = enricher._user_agent.cache_info()  # type: ignore[attr-defined]
    assert (info.misses, info.hits) == (1, 49)


def test_user_agent_can_be_turned_off() -> None:
    rec = record(**{"http.user_agent": CHROME})
    Enricher(EnrichConfig(user_agent=False))([rec], CTX)
    assert rec["attributes"] == {"http.user_agent": CHROME}


def test_service_map() -> None:
    config = EnrichConfig.from_dict(
        {
            "service_map": [
                {"match_host": r"^web-\d+$", "service": "nginx"},
                {"match_source": r"^/var/log/postgresql/", "service": "postgres"},
                {"match_host": "^api-", "match_source": "billing", "service": "billing", "override": True},
            ]
        }
    )
    enricher = Enricher(config)
    batch = [
        record(host="web-12"),
        record(host="web-12", service="already-named"),
        record(source="/var/log/postgresql/postgresql-16-main.log:1"),
        record(host="api-3", source="app/billing/charge.py:10", service="api"),
        record(host="api-3", source="app/leads.py:1", service="api"),
        record(host="db-1"),
    ]
    enricher(batch, CTX)
    assert [r["service"] for r in batch] == [
        "nginx",
        "already-named",
        "postgres",
        "billing",
        "api",
        "unknown",
    ]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"service_map": [{"service": "x"}]}, "match_host or match_source"),
        ({"service_map": [{"match_host": "(", "service": "x"}]}, "not a valid regex"),
        ({"service_map": [{"match_host": "a"}]}, "non-empty 'service'"),
        ({"service_map": [{"match_host": "a", "service": "x", "override": "yes"}]}, "override"),
        ({"user_agent": "on"}, "true or false"),
        ({"geoip_db": 5}, "file path"),
        ({"geo": None}, "unknown enrich setting"),
        ({"ip_attributes": "client.ip"}, "list of attribute names"),
    ],
)
def test_enrich_config_errors(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        EnrichConfig.from_dict(data)


@pytest.fixture
def geo_db(tmp_path: Path) -> Path:
    return write_mmdb(
        tmp_path / "test-city.mmdb",
        {
            "81.2.69.0/24": {
                "country": {
                    "iso_code": "GB",
                    "names": {"en": "United Kingdom", "de": "Vereinigtes Königreich"},
                },
                "city": {"names": {"en": "London"}},
                "location": {"latitude": 51.5142, "longitude": -0.0931},
            },
            "203.0.113.0/24": {"country": {"iso_code": "US", "names": {"en": "United States"}}},
        },
    )


def test_geoip_from_a_maxmind_db(geo_db: Path) -> None:
    enricher = Enricher(EnrichConfig(geoip_db=str(geo_db), ip_attributes=("client.ip", "context.ip_address")))
    london = record(**{"client.ip": "81.2.69.160"})
    us = record(**{"context.ip_address": "203.0.113.9"})
    private = record(**{"client.ip": "10.0.0.1"})
    garbage = record(**{"client.ip": "not-an-ip"})
    ipv6 = record(**{"client.ip": "2001:db8::1"})
    enricher([london, us, private, garbage, ipv6], CTX)
    enricher.close()
    assert london["attributes"] == {
        "client.ip": "81.2.69.160",
        "geo.country": "GB",
        "geo.country_name": "United Kingdom",
        "geo.city": "London",
    }
    assert us["attributes"] == {
        "context.ip_address": "203.0.113.9",
        "geo.country": "US",
        "geo.country_name": "United States",
    }
    for rec in (private, garbage, ipv6):
        assert not any(key.startswith("geo.") for key in rec["attributes"])
        assert ERROR_ATTRIBUTE not in rec["attributes"]


def test_geoip_is_off_without_a_database() -> None:
    rec = record(**{"client.ip": "81.2.69.160"})
    Enricher()([rec], CTX)
    assert rec["attributes"] == {"client.ip": "81.2.69.160"}


def test_a_missing_database_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Enricher(EnrichConfig(geoip_db=str(tmp_path / "absent.mmdb")))


def test_existing_attributes_are_not_overwritten_and_errors_are_marked() -> None:
    rec = record(**{"http.user_agent": CHROME, "user_agent.browser": "Set by app"})
    broken = {"service": "unknown", "host": "", "source": "", "attributes": None}
    Enricher()([rec, broken], CTX)  # type: ignore[list-item]
    assert rec["attributes"]["user_agent.browser"] == "Set by app"
    assert ERROR_ATTRIBUTE in broken

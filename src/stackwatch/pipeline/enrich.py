"""Enrich: add what the event does not say but Stackwatch can work out.

* **Service mapping**: rules ``{match_host: regex, match_source: regex, service: name,
  override: false}`` name the service of records from a host or source file (``web-\\d+`` ->
  ``nginx``). A rule applies to records whose service is ``"unknown"``, or to every matching
  record when ``override`` is true; the first matching rule wins. A rule with both matchers
  needs both to match (``search`` semantics).
* **User agent** (on by default): for records with ``http.user_agent`` (or
  ``user_agent.original``), ua-parser fills ``user_agent.browser``,
  ``user_agent.browser_version``, ``user_agent.os``, ``user_agent.os_version`` and
  ``user_agent.device`` ("Other" is left out). Results are kept in an LRU cache: a site sees
  few distinct user agents, and parsing one costs ~100 us.
* **GeoIP** (off unless ``geoip_db`` names a MaxMind DB file, e.g. GeoLite2-City): for
  records with ``client.ip``, fills ``geo.country`` (ISO code), ``geo.country_name`` and
  ``geo.city``. Also LRU-cached per IP.

Which attributes hold the IP and the user agent is configurable (``ip_attributes``,
``user_agent_attributes``); the first present one is used.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from stackwatch.pipeline.normalize import Block
from stackwatch.pipeline.stage import BatchContext, mark_error

__all__ = ["EnrichConfig", "Enricher", "ServiceMapRule"]

_CACHE_SIZE: Final = 4_096
_MAP_CACHE_MAX: Final = 16_384


@dataclass(frozen=True)
class ServiceMapRule:
    """Name the service of records whose host and/or source match."""

    service: str
    match_host: re.Pattern[str] | None = None
    match_source: re.Pattern[str] | None = None
    override: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceMapRule:
        """Build from ``{match_host, match_source, service, override}``; ValueError names the problem."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a service_map rule must be a mapping, not {data!r}")
        unknown = sorted(set(data) - {"match_host", "match_source", "service", "override"})
        if unknown:
            raise ValueError(f"unknown service_map setting(s) {unknown}")
        service = data.get("service")
        if not isinstance(service, str) or not service:
            raise ValueError(f"service_map rule needs a non-empty 'service', got {service!r}")
        patterns: dict[str, re.Pattern[str] | None] = {}
        for key in ("match_host", "match_source"):
            value = data.get(key)
            if value is None:
                patterns[key] = None
                continue
            try:
                patterns[key] = re.compile(str(value))
            except re.error as exc:
                raise ValueError(f"{key} {value!r} is not a valid regex: {exc}") from None
        if patterns["match_host"] is None and patterns["match_source"] is None:
            raise ValueError(f"service_map rule for {service!r} needs match_host or match_source")
        override = data.get("override", False)
        if not isinstance(override, bool):
            raise ValueError(f"override must be true or false, not {override!r}")
        return cls(service, patterns["match_host"], patterns["match_source"], override)

    def matches(self, host: str, source: str) -> bool:
        """True when every matcher the rule has finds its pattern."""
        if self.match_host is not None and self.match_host.search(host) is None:
            return False
        return self.match_source is None or self.match_source.search(source) is not None


@dataclass(frozen=True)
class EnrichConfig:
    """What the enrich stage adds. Every part is on by default except GeoIP (needs a DB file)."""

    service_map: tuple[ServiceMapRule, ...] = ()
    user_agent: bool = True
    geoip_db: str | None = None
    ip_attributes: tuple[str, ...] = ("client.ip",)
    user_agent_attributes: tuple[str, ...] = ("http.user_agent", "user_agent.original")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EnrichConfig:
        """Build from the ``enrich`` section of the pipeline config; ValueError names the bad key."""
        if not data:
            return cls()
        known = {"service_map", "user_agent", "geoip_db", "ip_attributes", "user_agent_attributes"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown enrich setting(s) {unknown}")
        if "user_agent" in data and not isinstance(data["user_agent"], bool):
            raise ValueError(f"user_agent must be true or false, not {data['user_agent']!r}")
        geoip = data.get("geoip_db")
        if geoip is not None and not isinstance(geoip, str):
            raise ValueError(f"geoip_db must be a file path, not {geoip!r}")
        rules = data.get("service_map") or ()
        if not isinstance(rules, Iterable) or isinstance(rules, str | Mapping):
            raise ValueError(f"service_map must be a list of rules, not {rules!r}")
        kwargs: dict[str, Any] = {
            "service_map": tuple(
                r if isinstance(r, ServiceMapRule) else ServiceMapRule.from_dict(r) for r in rules
            ),
            "user_agent": data.get("user_agent", True),
            "geoip_db": geoip,
        }
        for key in ("ip_attributes", "user_agent_attributes"):
            if key in data:
                value = data[key]
                if isinstance(value, str) or not isinstance(value, Iterable):
                    raise ValueError(f"{key} must be a list of attribute names, not {value!r}")
                kwargs[key] = tuple(str(v) for v in value)
        return cls(**kwargs)


def _parse_user_agent(agent: str) -> tuple[tuple[str, Any], ...]:
    # Imported here: ua-parser loads its regex tables on import, and servers that turn the
    # feature off should not pay for it.
    import ua_parser

    result = ua_parser.parse(agent)
    out: list[tuple[str, Any]] = []
    browser, system, device = result.user_agent, result.os, result.device
    if browser is not None and browser.family != "Other":
        out.append(("user_agent.browser", browser.family))
        if browser.major:
            out.append(
                ("user_agent.browser_version", ".".join(v for v in (browser.major, browser.minor) if v))
            )
    if system is not None and system.family != "Other":
        out.append(("user_agent.os", system.family))
        if system.major:
            out.append(("user_agent.os_version", ".".join(v for v in (system.major, system.minor) if v)))
    if device is not None and device.family != "Other":
        out.append(("user_agent.device", device.family))
    return tuple(out)


class Enricher:
    """The enrich stage (see the module docstring): records in, records out, one for one."""

    name = "enrich"

    def __init__(self, config: EnrichConfig | None = None) -> None:
        self.config = config or EnrichConfig()
        self._rules = self.config.service_map
        self._any_override = any(r.override for r in self._rules)
        self._service_cache: dict[tuple[str, str, str], str | None] = {}
        self._ua_keys = self.config.user_agent_attributes if self.config.user_agent else ()
        self._ip_keys: tuple[str, ...] = ()
        self._reader: Any = None
        if self.config.geoip_db:
            import maxminddb

            # Opening reads the metadata, so a wrong path or file stops start-up here.
            self._reader = maxminddb.open_database(self.config.geoip_db)
            self._ip_keys = self.config.ip_attributes
        self._user_agent = functools.lru_cache(maxsize=_CACHE_SIZE)(_parse_user_agent)
        self._geo = functools.lru_cache(maxsize=_CACHE_SIZE)(self._lookup_ip)

    def close(self) -> None:
        """Release the GeoIP database file."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __call__(self, batch: list[dict[str, Any]], context: BatchContext) -> list[dict[str, Any]]:
        enrich = self.enrich_record
        for record in batch:
            try:
                enrich(record)
            except Exception as exc:  # keep the record as it is, marked
                mark_error(record, self.name, exc)
        return batch

    def enrich_record(self, record: dict[str, Any]) -> None:
        """Add service, user-agent and geo fields to one record, in place."""
        if self._rules and (self._any_override or record["service"] == "unknown"):
            service = self._mapped_service(record["host"], record["source"], record["service"])
            if service is not None:
                record["service"] = service
        attributes = record["attributes"]
        for key in self._ua_keys:
            agent = attributes.get(key)
            if agent.__class__ is str and agent:
                for name, value in self._user_agent(agent):
                    attributes.setdefault(name, value)
                break
        for key in self._ip_keys:
            address = attributes.get(key)
            if address.__class__ is str and address:
                for name, value in self._geo(address):
                    attributes.setdefault(name, value)
                break

    @property
    def read_attributes(self) -> tuple[str, ...]:
        """Attribute keys whose values this stage reads (user agents, IPs), in config order."""
        return (*self._ua_keys, *self._ip_keys)

    def enrich_block(self, block: Block) -> list[Block]:
        """What :meth:`enrich_record` does to each row, column by column.

        Services are mapped once per distinct (host, source, service); user agents and IPs are
        looked up once per distinct value (the LRU caches are shared with the record path).
        The attributes they add depend on the value (an unknown browser adds none), so the
        block is split by the keys added, and each part gets them as columns, after the
        existing ones (``setdefault`` order). Raises on anything the record path would mark.
        """
        n = len(block)
        text = block.text
        if self._rules:
            triples = list(zip(text["host"], text["source"], text["service"], strict=True))
            mapped = {
                t: self._mapped_service(*t) if self._any_override or t[2] == "unknown" else None
                for t in set(triples)
            }
            text["service"] = [found if (found := mapped[t]) is not None else t[2] for t in triples]
        if not self._ua_keys and not self._ip_keys:
            return [block]
        attributes = block.attributes
        agents = self._first_text(block, self._ua_keys)
        addresses = self._first_text(block, self._ip_keys)
        if agents is None and addresses is None:
            return [block]
        extras: list[tuple[tuple[str, Any], ...]] = [()] * n
        if agents is not None:
            parsed = {agent: self._user_agent(agent) for agent in set(agents) if agent}
            kept = {
                agent: tuple(p for p in pairs if p[0] not in attributes) for agent, pairs in parsed.items()
            }
            extras = [kept[agent] if agent else () for agent in agents]
            if any(key.startswith("user_agent.") and key not in attributes for key in self._ip_keys):
                raise ValueError("an IP attribute the user-agent step may add: take the record path")
        if addresses is not None:
            looked = {address: self._geo(address) for address in set(addresses) if address}
            extras = [
                (
                    *ua,
                    *(p for p in looked[address] if p[0] not in attributes and all(p[0] != q[0] for q in ua)),
                )
                if address
                else ua
                for ua, address in zip(extras, addresses, strict=True)
            ]
        groups: dict[tuple[tuple[str, type], ...], list[int]] = {}
        for row, added in enumerate(extras):
            groups.setdefault(tuple((k, v.__class__) for k, v in added), []).append(row)
        parts = []
        for shape, rows in groups.items():
            part = block if len(groups) == 1 else block.take(rows)
            for j, (key, cls) in enumerate(shape):
                if cls not in (str, int, float, bool):
                    raise ValueError(f"{cls.__name__} from an enrichment lookup: take the record path")
                part.attributes[key] = ([extras[r][j][1] for r in rows], cls)
            parts.append(part)
        return parts

    @staticmethod
    def _first_text(block: Block, keys: tuple[str, ...]) -> list[str] | None:
        """Per row, the first non-empty string among ``keys`` ("" when none), or None."""
        found: list[str] | None = None
        for key in keys:
            entry = block.attributes.get(key)
            if entry is None or entry[1] is not str:
                continue
            column = entry[0]
            found = list(column) if found is None else [a or b for a, b in zip(found, column, strict=True)]
            if all(found):
                break
        return found

    def _mapped_service(self, host: str, source: str, current: str) -> str | None:
        key = (host, source, current)
        if key in self._service_cache:
            return self._service_cache[key]
        found = None
        for rule in self._rules:
            if (rule.override or current == "unknown") and rule.matches(host, source):
                found = rule.service
                break
        if len(self._service_cache) >= _MAP_CACHE_MAX:
            self._service_cache.clear()
        self._service_cache[key] = found
        return found

    def _lookup_ip(self, address: str) -> tuple[tuple[str, Any], ...]:
        try:
            found = self._reader.get(address.strip("[]"))
        except ValueError:  # not an IP, or IPv6 in an IPv4-only database
            return ()
        if not isinstance(found, Mapping):
            return ()
        out: list[tuple[str, Any]] = []
        country = found.get("country") or found.get("registered_country") or {}
        if country.get("iso_code"):
            out.append(("geo.country", country["iso_code"]))
        if (country.get("names") or {}).get("en"):
            out.append(("geo.country_name", country["names"]["en"]))
        city = (found.get("city") or {}).get("names") or {}
        if city.get("en"):
            out.append(("geo.city", city["en"]))
        return tuple(out)

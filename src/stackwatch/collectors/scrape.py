"""The scraper: Prometheus ``scrape_configs`` pulled into the metrics store through the WAL.

A team's existing ``prometheus.yml`` scrape section works unchanged: ``job_name``,
``scrape_interval``, ``scrape_timeout``, ``metrics_path``, ``scheme``, ``params``,
``static_configs``, ``file_sd_configs``, ``relabel_configs``, ``metric_relabel_configs``,
``honor_labels``, ``honor_timestamps``, ``basic_auth``, ``authorization``/``bearer_token``,
``tls_config`` and ``sample_limit``. Each target gets ``job`` and ``instance`` and the report
series Prometheus writes (``up``, ``scrape_duration_seconds``, ``scrape_samples_scraped``,
``scrape_samples_post_metric_relabeling``, ``scrape_series_added``), and staleness markers are
written when a series disappears from a target, when a scrape fails, and when a target goes
away, so ``up == 0`` alerts and ``absent()`` behave as on Prometheus.

Kept apart from the HTTP server so that the same loop can later run inside the host agent:
it needs only a sink that makes a :class:`MetricBatch` durable.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import yaml

from stackwatch.collectors.relabel import RelabelRule, compile_rules, relabel
from stackwatch.errors import BadRequest, ConfigError, StackwatchError
from stackwatch.ingest.prom_text import parse_openmetrics, parse_prometheus_text
from stackwatch.query.promql import STALE_NAN
from stackwatch.query.timerange import parse_duration
from stackwatch.storage.metrics import MetricBatch

__all__ = [
    "ScrapeConfig", "Scraper", "Target", "TargetStatus", "configs_from_settings", "discover", "load_scrape_configs",
]

log = logging.getLogger("stackwatch.scrape")

Sink = Callable[[str, MetricBatch], Awaitable[None]]

ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
)
USER_AGENT = "Stackwatch-scraper"

_CONFIG_KEYS = {
    "job_name", "scrape_interval", "scrape_timeout", "metrics_path", "scheme", "params", "static_configs",
    "file_sd_configs", "relabel_configs", "metric_relabel_configs", "honor_labels", "honor_timestamps",
    "basic_auth", "authorization", "bearer_token", "bearer_token_file", "tls_config", "sample_limit",
    "body_size_limit", "label_limit", "project",
}  # fmt: skip
# Accepted so that a prometheus.yml loads unchanged; they tune features we do not have
# (native histograms, HTTP/2, protocol negotiation) and change nothing about the samples.
_IGNORED_KEYS = {
    "scrape_protocols", "enable_http2", "follow_redirects", "enable_compression", "label_name_length_limit",
    "label_value_length_limit", "target_limit", "keep_dropped_targets", "native_histogram_bucket_limit",
    "native_histogram_min_bucket_factor", "scrape_classic_histograms", "always_scrape_classic_histograms",
    "fallback_scrape_protocol", "convert_classic_histograms_to_nhcb", "track_timestamps_staleness",
    "scrape_failure_log_file", "metric_name_validation_scheme", "metric_name_escaping_scheme", "proxy_url",
    "no_proxy", "proxy_from_environment", "scrape_native_histograms",
}  # fmt: skip
_UNSUPPORTED_SD = (
    "kubernetes_sd_configs", "consul_sd_configs", "dns_sd_configs", "ec2_sd_configs", "gce_sd_configs",
    "azure_sd_configs", "docker_sd_configs", "dockerswarm_sd_configs", "http_sd_configs", "nomad_sd_configs",
    "openstack_sd_configs", "digitalocean_sd_configs", "hetzner_sd_configs", "linode_sd_configs",
    "eureka_sd_configs", "marathon_sd_configs", "serverset_sd_configs", "triton_sd_configs", "ionos_sd_configs",
    "kuma_sd_configs", "lightsail_sd_configs", "puppetdb_sd_configs", "scaleway_sd_configs", "uyuni_sd_configs",
    "vultr_sd_configs", "ovhcloud_sd_configs",
)  # fmt: skip
_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSD:
    patterns: tuple[str, ...]
    refresh_s: float


@dataclass(frozen=True)
class ScrapeConfig:
    job_name: str
    interval_s: float
    timeout_s: float
    metrics_path: str = "/metrics"
    scheme: str = "http"
    params: tuple[tuple[str, tuple[str, ...]], ...] = ()
    static: tuple[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], ...] = ()
    file_sd: tuple[FileSD, ...] = ()
    relabel: tuple[RelabelRule, ...] = ()
    metric_relabel: tuple[RelabelRule, ...] = ()
    honor_labels: bool = False
    honor_timestamps: bool = True
    basic_auth: tuple[str, str] | None = None
    bearer_token: str | None = None
    auth_type: str = "Bearer"
    tls_verify: bool | str = True
    tls_cert: tuple[str, str] | None = None
    sample_limit: int = 0
    label_limit: int = 0
    body_size_limit: int = 0
    project: str = "default"
    external_labels: tuple[tuple[str, str], ...] = ()


def _seconds(value: Any, where: str) -> float:
    try:
        return parse_duration(str(value)) / 1e9
    except BadRequest as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


def _size(value: Any, where: str) -> int:
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].strip().isdigit():
            return int(text[: -len(unit)]) * _SIZE_UNITS[unit]
    raise ConfigError(f"{where}: {value!r} is not a size (use forms like 10MB)")


def _secret(inline: Any, path: Any, where: str) -> str | None:
    if path:
        try:
            return Path(str(path)).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path!r}: {exc.strerror}") from None
    return None if inline is None else str(inline)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    return value


def _label_pairs(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in _mapping(value, where).items())


def load_scrape_configs(raw: Mapping[str, Any], *, base_dir: Path | None = None) -> list[ScrapeConfig]:
    """Validate a ``prometheus.yml``-shaped mapping (``global`` + ``scrape_configs``).

    Every problem is a :class:`ConfigError` naming the job and key, raised at start-up rather
    than discovered at the first scrape.
    """
    glob_cfg = _mapping(raw.get("global"), "global")
    default_interval = _seconds(glob_cfg.get("scrape_interval", "1m"), "global.scrape_interval")
    default_timeout = _seconds(glob_cfg.get("scrape_timeout", "10s"), "global.scrape_timeout")
    external = _label_pairs(glob_cfg.get("external_labels"), "global.external_labels")
    items = raw.get("scrape_configs") or []
    if not isinstance(items, list):
        raise ConfigError("scrape_configs: must be a list")
    seen: set[str] = set()
    configs = []
    for i, item in enumerate(items):
        where = f"scrape_configs[{i}]"
        item = _mapping(item, where)
        job = item.get("job_name")
        if not job or not isinstance(job, str):
            raise ConfigError(f"{where}: job_name is required")
        where = f"scrape_configs[{job}]"
        if job in seen:
            raise ConfigError(f"{where}: job_name {job!r} is used twice")
        seen.add(job)
        configs.append(_one_config(item, where, default_interval, default_timeout, external, base_dir))
    return configs


def _one_config(
    item: Mapping[str, Any],
    where: str,
    default_interval: float,
    default_timeout: float,
    external: tuple[tuple[str, str], ...],
    base_dir: Path | None,
) -> ScrapeConfig:
    for key in item:
        if key in _UNSUPPORTED_SD:
            raise ConfigError(f"{where}.{key}: not supported; use static_configs or file_sd_configs")
        if key not in _CONFIG_KEYS and key not in _IGNORED_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}")
    interval = _seconds(item.get("scrape_interval", default_interval), f"{where}.scrape_interval")
    timeout = _seconds(item.get("scrape_timeout", min(default_timeout, interval)), f"{where}.scrape_timeout")
    if interval <= 0:
        raise ConfigError(f"{where}.scrape_interval: must be positive")
    if timeout <= 0 or timeout > interval:
        raise ConfigError(f"{where}.scrape_timeout: must be positive and at most scrape_interval ({interval:g}s)")
    scheme = str(item.get("scheme", "http"))
    if scheme not in ("http", "https"):
        raise ConfigError(f"{where}.scheme: must be http or https")
    path = str(item.get("metrics_path", "/metrics"))
    if not path.startswith("/"):
        raise ConfigError(f"{where}.metrics_path: must start with /")
    params = []
    for name, values in _mapping(item.get("params"), f"{where}.params").items():
        values = values if isinstance(values, list) else [values]
        params.append((str(name), tuple(str(v) for v in values)))
    static = []
    for j, group in enumerate(item.get("static_configs") or []):
        g = _mapping(group, f"{where}.static_configs[{j}]")
        targets = g.get("targets") or []
        if not isinstance(targets, list):
            raise ConfigError(f"{where}.static_configs[{j}].targets: must be a list of host:port")
        static.append((tuple(str(t) for t in targets), _label_pairs(g.get("labels"), f"{where}.static_configs[{j}]")))
    file_sd = []
    for j, sd in enumerate(item.get("file_sd_configs") or []):
        s = _mapping(sd, f"{where}.file_sd_configs[{j}]")
        files = s.get("files") or []
        if not isinstance(files, list) or not files:
            raise ConfigError(f"{where}.file_sd_configs[{j}].files: must be a non-empty list of paths")
        resolved = tuple(str((base_dir / f) if base_dir and not Path(f).is_absolute() else f) for f in files)
        refresh = _seconds(s.get("refresh_interval", "5m"), f"{where}.file_sd_configs[{j}].refresh_interval")
        file_sd.append(FileSD(resolved, refresh))
    basic = None
    if item.get("basic_auth") is not None:
        b = _mapping(item["basic_auth"], f"{where}.basic_auth")
        password = _secret(b.get("password"), b.get("password_file"), f"{where}.basic_auth.password_file")
        basic = (str(b.get("username", "")), password or "")
    bearer = _secret(item.get("bearer_token"), item.get("bearer_token_file"), f"{where}.bearer_token_file")
    auth_type = "Bearer"
    if item.get("authorization") is not None:
        a = _mapping(item["authorization"], f"{where}.authorization")
        auth_type = str(a.get("type", "Bearer"))
        bearer = _secret(a.get("credentials"), a.get("credentials_file"), f"{where}.authorization.credentials_file")
    if basic and bearer:
        raise ConfigError(f"{where}: basic_auth and authorization/bearer_token are mutually exclusive")
    tls = _mapping(item.get("tls_config"), f"{where}.tls_config")
    verify: bool | str = not bool(tls.get("insecure_skip_verify", False))
    if verify and tls.get("ca_file"):
        verify = str(tls["ca_file"])
    cert = (str(tls["cert_file"]), str(tls.get("key_file", ""))) if tls.get("cert_file") else None
    sample_limit = item.get("sample_limit", 0)
    if not isinstance(sample_limit, int) or sample_limit < 0:
        raise ConfigError(f"{where}.sample_limit: must be a non-negative integer")
    label_limit = item.get("label_limit", 0)
    if not isinstance(label_limit, int) or label_limit < 0:
        raise ConfigError(f"{where}.label_limit: must be a non-negative integer")
    return ScrapeConfig(
        job_name=str(item["job_name"]),
        interval_s=interval,
        timeout_s=timeout,
        metrics_path=path,
        scheme=scheme,
        params=tuple(params),
        static=tuple(static),
        file_sd=tuple(file_sd),
        relabel=tuple(compile_rules(item.get("relabel_configs"), f"{where}.relabel_configs")),
        metric_relabel=tuple(compile_rules(item.get("metric_relabel_configs"), f"{where}.metric_relabel_configs")),
        honor_labels=bool(item.get("honor_labels", False)),
        honor_timestamps=bool(item.get("honor_timestamps", True)),
        basic_auth=basic,
        bearer_token=bearer,
        auth_type=auth_type,
        tls_verify=verify,
        tls_cert=cert,
        sample_limit=sample_limit,
        label_limit=label_limit,
        body_size_limit=_size(item["body_size_limit"], f"{where}.body_size_limit") if item.get("body_size_limit") else 0,
        project=str(item.get("project", "default")),
        external_labels=external,
    )


# -- targets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    config: ScrapeConfig
    url: str
    labels: tuple[tuple[str, str], ...]  # final: job, instance and the rest, sorted
    discovered: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        """Identity across rediscoveries: the same job, URL and labels are the same target."""
        text = json.dumps([self.config.job_name, self.url, self.labels])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def instance(self) -> str:
        return dict(self.labels).get("instance", "")


def _file_groups(sd: FileSD) -> list[tuple[tuple[str, ...], tuple[tuple[str, str], ...]]]:
    """Target groups from file_sd files; a broken file is logged and contributes nothing, as
    in Prometheus, so one typo does not take every other target down."""
    groups = []
    for pattern in sd.patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                text = Path(path).read_text()
                data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
                if data is None:
                    continue
                if not isinstance(data, list):
                    raise ValueError("must hold a list of target groups")
                for group in data:
                    if not isinstance(group, Mapping) or not isinstance(group.get("targets", []), list):
                        raise ValueError("each group needs a targets list")
                    labels = {str(k): str(v) for k, v in (group.get("labels") or {}).items()}
                    labels["__meta_filepath"] = path
                    groups.append((tuple(str(t) for t in group.get("targets") or []), tuple(labels.items())))
            except (OSError, ValueError, yaml.YAMLError) as exc:
                log.warning("file_sd %s: %s", path, exc)
    return groups


def discover(config: ScrapeConfig) -> tuple[list[Target], list[dict[str, str]]]:
    """The config's targets after relabeling, and the discovered label sets that were dropped."""
    groups = list(config.static)
    for sd in config.file_sd:
        groups.extend(_file_groups(sd))
    active: dict[str, Target] = {}
    dropped = []
    for addresses, group_labels in groups:
        for address in addresses:
            discovered = {**dict(group_labels), "__address__": address}
            labels = dict(discovered)
            defaults = {
                "job": config.job_name,
                "__scheme__": config.scheme,
                "__metrics_path__": config.metrics_path,
                "__scrape_interval__": _duration_text(config.interval_s),
                "__scrape_timeout__": _duration_text(config.timeout_s),
            }
            for name, values in config.params:
                if values:
                    defaults[f"__param_{name}"] = values[0]
            for name, value in defaults.items():
                labels.setdefault(name, value)
            result = relabel(labels, config.relabel)
            if result is None or not result.get("__address__"):
                dropped.append(discovered)
                continue
            target = _target(config, result, discovered)
            active.setdefault(target.key, target)
    return list(active.values()), dropped


def _duration_text(seconds: float) -> str:
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def _target(config: ScrapeConfig, labels: dict[str, str], discovered: dict[str, str]) -> Target:
    address = labels["__address__"]
    scheme = labels.get("__scheme__", config.scheme)
    path = labels.get("__metrics_path__", config.metrics_path)
    query: list[tuple[str, str]] = []
    overridden = {name[len("__param_"):] for name in labels if name.startswith("__param_")}
    for name, values in config.params:
        if name not in overridden:
            query.extend((name, v) for v in values)
    for name, value in labels.items():
        if name.startswith("__param_"):
            query.append((name[len("__param_"):], value))
    url = f"{scheme}://{address}{path}" + (f"?{urlencode(query)}" if query else "")
    final = {k: v for k, v in labels.items() if not k.startswith("__")}
    final.setdefault("instance", address)
    return Target(config, url, tuple(sorted(final.items())), tuple(sorted(discovered.items())))


# -- scraping ------------------------------------------------------------------------------------


@dataclass
class TargetStatus:
    """What ``/api/v1/targets`` shows for one target."""

    target: Target
    health: str = "unknown"
    last_error: str = ""
    last_scrape: float = 0.0
    last_duration_s: float = 0.0
    series: set[tuple[tuple[str, str], ...]] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        from datetime import UTC, datetime

        cfg = self.target.config
        return {
            "discoveredLabels": dict(self.target.discovered),
            "labels": dict(self.target.labels),
            "scrapePool": cfg.job_name,
            "scrapeUrl": self.target.url,
            "globalUrl": self.target.url,
            "lastError": self.last_error,
            "lastScrape": (
                datetime.fromtimestamp(self.last_scrape, UTC).isoformat().replace("+00:00", "Z")
                if self.last_scrape
                else "0001-01-01T00:00:00Z"
            ),
            "lastScrapeDuration": round(self.last_duration_s, 6),
            "health": self.health,
            "scrapeInterval": _duration_text(cfg.interval_s),
            "scrapeTimeout": _duration_text(cfg.timeout_s),
        }


class ScrapeFailed(Exception):
    pass


def _samples(body: bytes, content_type: str) -> list[Any]:
    """(family type, family name, help, unit, samples); timestamps normalised to ms."""
    openmetrics = "openmetrics" in content_type.lower()
    try:
        families = parse_openmetrics(body) if openmetrics else parse_prometheus_text(body)
    except StackwatchError as exc:
        raise ScrapeFailed(exc.message) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScrapeFailed(f"cannot parse the exposition: {exc}") from None
    out = []
    for fam in families:
        if openmetrics:
            for s in fam.samples:
                if s.timestamp is not None:
                    s.timestamp = s.timestamp * 1000
        out.append(fam)
    return out


class Scraper:
    """Runs one loop per target; rediscovers file_sd targets while running.

    ``clock`` returns epoch seconds and is used for sample timestamps (tests pass a fixed one
    to :meth:`scrape_target`); ``transport`` lets tests scrape an in-process app.
    """

    def __init__(
        self,
        configs: Sequence[ScrapeConfig],
        sink: Sink,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.configs = list(configs)
        self.sink = sink
        self.clock = clock
        self._transport = transport
        self.status: dict[str, TargetStatus] = {}
        self.dropped: dict[str, list[dict[str, str]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._file_state: dict[str, float] = {}

    # -- lifecycle

    async def start(self) -> None:
        await self.sync_targets()
        self._supervisor = asyncio.create_task(self._watch(), name="scrape-discovery")

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for key in list(self._tasks):
            await self._retire(key)
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def _watch(self) -> None:
        """Re-read file_sd files when they change (mtime polled every few seconds) and at each
        config's refresh interval; start and stop target loops to match."""
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(2.0)
            refresh = min((sd.refresh_s for c in self.configs for sd in c.file_sd), default=0.0)
            changed = self._files_changed()
            if changed or (refresh and time.monotonic() - last_full >= refresh):
                last_full = time.monotonic()
                try:
                    await self.sync_targets()
                except Exception:  # keep scraping the known targets whatever discovery does
                    log.exception("target discovery failed")

    def _files_changed(self) -> bool:
        state = {}
        for c in self.configs:
            for sd in c.file_sd:
                for pattern in sd.patterns:
                    for path in glob.glob(pattern):
                        try:
                            state[path] = Path(path).stat().st_mtime
                        except OSError:
                            continue
        changed = state != self._file_state
        self._file_state = state
        return changed

    async def sync_targets(self) -> None:
        wanted: dict[str, Target] = {}
        for config in self.configs:
            targets, dropped = discover(config)
            self.dropped[config.job_name] = dropped
            for t in targets:
                wanted[t.key] = t
        for key in [k for k in self._tasks if k not in wanted]:
            await self._retire(key)
        for key, target in wanted.items():
            if key not in self._tasks:
                self.status[key] = TargetStatus(target)
                self._tasks[key] = asyncio.create_task(self._loop(target), name=f"scrape-{target.url}")

    async def _retire(self, key: str) -> None:
        """Stop a target's loop and mark all its series stale, as Prometheus does when a target
        disappears, so its last values stop answering instant queries at once."""
        task = self._tasks.pop(key)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        status = self.status.pop(key, None)
        if status is not None and status.series:
            batch = MetricBatch()
            now_ms = int(self.clock() * 1000)
            for labels in status.series:
                batch.add(labels, now_ms, STALE_NAN)
            for name in _REPORT_NAMES:
                batch.add([("__name__", name), *status.target.labels], now_ms, STALE_NAN)
            await self._emit(status.target, batch)

    async def _loop(self, target: Target) -> None:
        interval = target.config.interval_s
        # Spread targets over the interval (stable per target) so they are not all scraped at once.
        offset = (int(target.key, 16) % 10_000) / 10_000 * interval
        now = self.clock()
        next_at = math.floor(now / interval) * interval + offset
        if next_at < now:
            next_at += interval
        while True:
            await asyncio.sleep(max(0.0, next_at - self.clock()))
            try:
                await self.scrape_target(target)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scrape of %s failed unexpectedly", target.url)
            next_at += interval
            if next_at < self.clock():  # fell behind (slow sink, suspended host): skip, don't burst
                next_at = self.clock() + interval - ((self.clock() - next_at) % interval)

    def _client(self, config: ScrapeConfig) -> httpx.AsyncClient:
        client = self._clients.get(config.job_name)
        if client is None:
            headers = {"Accept": ACCEPT, "User-Agent": USER_AGENT}
            if config.bearer_token:
                headers["Authorization"] = f"{config.auth_type} {config.bearer_token}"
            kwargs: dict[str, Any] = {"headers": headers, "follow_redirects": True}
            if self._transport is not None:
                kwargs["transport"] = self._transport
            else:
                kwargs["verify"] = config.tls_verify
                if config.tls_cert:
                    kwargs["cert"] = config.tls_cert
            if config.basic_auth:
                kwargs["auth"] = httpx.BasicAuth(*config.basic_auth)
            client = httpx.AsyncClient(**kwargs)
            self._clients[config.job_name] = client
        return client

    async def _fetch(self, target: Target) -> tuple[bytes, str]:
        config = target.config
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": f"{config.timeout_s:g}"}
        try:
            async with asyncio.timeout(config.timeout_s):
                response = await self._client(config).get(target.url, headers=headers)
        except TimeoutError:
            raise ScrapeFailed(f"scrape timed out after {config.timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise ScrapeFailed(f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise ScrapeFailed(f"server returned HTTP status {response.status_code} {response.reason_phrase}")
        body = response.content
        if config.body_size_limit and len(body) > config.body_size_limit:
            raise ScrapeFailed(f"body size limit exceeded ({len(body)} > {config.body_size_limit} bytes)")
        return body, response.headers.get("content-type", "")

    async def scrape_target(self, target: Target) -> TargetStatus:
        """Scrape once now: store the samples, the report series and staleness markers."""
        status = self.status.setdefault(target.key, TargetStatus(target))
        config = target.config
        started = self.clock()
        ts_ms = int(started * 1000)
        t0 = time.perf_counter()
        batch = MetricBatch()
        current: set[tuple[tuple[str, str], ...]] = set()
        scraped = kept = 0
        error = ""
        try:
            body, ctype = await self._fetch(target)
            families = _samples(body, ctype)
            scraped, kept = self._append(target, families, ts_ms, batch, current)
        except ScrapeFailed as exc:
            error = str(exc)
            batch = MetricBatch()
            current = set()
            kept = 0
        duration = time.perf_counter() - t0
        added = len(current - status.series)
        for labels in status.series - current:
            batch.add(labels, ts_ms, STALE_NAN)
        report = {
            "up": 0.0 if error else 1.0,
            "scrape_duration_seconds": duration,
            "scrape_samples_scraped": float(scraped),
            "scrape_samples_post_metric_relabeling": float(kept),
            "scrape_series_added": float(added),
        }
        for name, value in report.items():
            batch.add([("__name__", name), *target.labels], ts_ms, value)
        status.series = current
        # A down target is said once when it goes down (or fails differently) and once when it
        # is back, not every interval: `up == 0` and the targets page say the rest.
        if error and (status.health != "down" or status.last_error != error):
            log.warning("scrape of %s (job %s) failed: %s", target.url, config.job_name, error)
        elif not error and status.health == "down":
            log.info("scrape of %s (job %s) succeeds again", target.url, config.job_name)
        status.health = "down" if error else "up"
        status.last_error = error
        status.last_scrape = started
        status.last_duration_s = duration
        await self._emit(target, batch)
        return status

    def _append(
        self,
        target: Target,
        families: Iterable[Any],
        ts_ms: int,
        batch: MetricBatch,
        current: set[tuple[tuple[str, str], ...]],
    ) -> tuple[int, int]:
        config = target.config
        target_labels = dict(target.labels)
        for name, value in config.external_labels:
            target_labels.setdefault(name, value)
        scraped = kept = 0
        for fam in families:
            if fam.typed or fam.help is not None or fam.unit:
                batch.add_metadata(fam.name, fam.type, fam.help or "", fam.unit or "")
            for s in fam.samples:
                scraped += 1
                labels = self._merge(s.name, s.labels, target_labels, config.honor_labels)
                if config.metric_relabel:
                    result = relabel(labels, config.metric_relabel)
                    if result is None or not result.get("__name__"):
                        continue
                    labels = result
                if config.label_limit and len(labels) - 1 > config.label_limit:
                    raise ScrapeFailed(f"label_limit exceeded ({len(labels) - 1} > {config.label_limit})")
                kept += 1
                if config.sample_limit and kept > config.sample_limit:
                    raise ScrapeFailed(f"sample_limit exceeded (more than {config.sample_limit} samples)")
                pairs = tuple(sorted((k, v) for k, v in labels.items() if v != ""))
                if s.timestamp is not None and config.honor_timestamps:
                    ts = int(s.timestamp)
                else:
                    ts = ts_ms
                    current.add(pairs)
                batch.add(pairs, ts, s.value)
        return scraped, kept

    @staticmethod
    def _merge(
        name: str, scraped: Sequence[tuple[str, str]], target: Mapping[str, str], honor: bool
    ) -> dict[str, str]:
        labels = dict(scraped)
        labels["__name__"] = name
        for key, value in target.items():
            if key in labels:
                if honor:
                    continue  # the exposition's own label wins (federation, pushgateway)
                # The target's label wins; the scraped one is kept as exported_<name>.
                exported = "exported_" + key
                while exported in labels:
                    exported = "exported_" + exported
                labels[exported] = labels[key]
            labels[key] = value
        return labels

    async def _emit(self, target: Target, batch: MetricBatch) -> None:
        if batch.sample_count:
            await self.sink(target.config.project, batch)

    def targets_json(self, state: str = "any") -> dict[str, Any]:
        """``/api/v1/targets``: active targets with health, and the dropped ones."""
        active = [s.to_json() for s in self.status.values()] if state in ("any", "active") else []
        dropped = (
            [{"discoveredLabels": d} for ds in self.dropped.values() for d in ds] if state in ("any", "dropped") else []
        )
        return {"activeTargets": active, "droppedTargets": dropped}


_REPORT_NAMES = (
    "up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
)  # fmt: skip


def configs_from_settings(settings: Any) -> list[ScrapeConfig]:
    """The scrape configs of the server's settings: ``scrape_config_file`` (a prometheus.yml;
    its ``global`` section applies to its jobs) plus ``scrape_configs`` in the server's own
    YAML. A job name defined in both is an error rather than a silent override."""
    configs: list[ScrapeConfig] = []
    if settings.scrape_config_file:
        path = Path(settings.scrape_config_file)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"setting 'scrape_config_file': cannot read {str(path)!r}: {exc}") from None
        if not isinstance(raw, Mapping):
            raise ConfigError(f"setting 'scrape_config_file': {str(path)!r} must hold a mapping")
        configs.extend(load_scrape_configs(raw, base_dir=path.parent))
    inline = settings.extra.get("scrape_configs")
    if inline:
        more = load_scrape_configs({"global": settings.extra.get("global") or {}, "scrape_configs": inline})
        clash = {c.job_name for c in configs} & {c.job_name for c in more}
        if clash:
            raise ConfigError(f"scrape_configs: job {sorted(clash)[0]!r} is defined in two places")
        configs.extend(more)
    return configs

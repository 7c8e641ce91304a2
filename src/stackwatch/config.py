"""Server settings: one frozen object built from defaults, then YAML, then ``STACKWATCH_*``.

Every setting is declared once in :data:`SETTINGS` with its type, default, and a docstring;
`docs/configuration.md` is generated from the same table (``stackwatch config docs``), so the
documentation cannot drift from the code. A bad value stops start-up with a message that names
the key and the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from stackwatch.errors import ConfigError

__all__ = ["SETTINGS", "Settings", "load_settings", "settings_markdown"]


@dataclass(frozen=True)
class Setting:
    key: str
    type: type
    default: Any
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "Address the HTTP server listens on."),
    Setting("port", int, 8040, "Port the HTTP server listens on."),
    Setting("data_dir", str, "./data", "Directory for the embedded stores, the WAL and cold files."),
    Setting(
        "public_url",
        str,
        "",
        "URL users and clients reach the server at (used in DSNs and links); defaults to http://host:port.",
    ),
    Setting(
        "clickhouse_url",
        str,
        "",
        "ClickHouse server URL (http://user:pass@host:8123/db). Empty: embedded chDB under data_dir.",
    ),
    Setting(
        "clickhouse_cluster",
        str,
        "",
        "ClickHouse cluster name: tables become Replicated*MergeTree with Distributed tables over them.",
    ),
    Setting(
        "database_url",
        str,
        "",
        "SQLAlchemy URL of the relational store. Empty: SQLite file under data_dir. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    ),
    Setting(
        "admin_token",
        str,
        "",
        "On first start, becomes the admin's API token (for automation). Otherwise one is generated and printed once.",
    ),
    Setting(
        "ingest_token",
        str,
        "",
        "On first start, becomes the default project's ingest token (and Sentry DSN key).",
    ),
    Setting(
        "api_token_cache_s",
        float,
        5.0,
        "Seconds a verified API token is answered from memory (0: check the database on every request). "
        "Revoking through Stackwatch acts at once; a user disabled or demoted in the database, within this time.",
    ),
    Setting("wal_segment_bytes", int, 16 * 1024 * 1024, "Size at which a WAL segment file is rolled."),
    Setting(
        "wal_fsync",
        bool,
        True,
        "fsync the WAL before acknowledging. Turning it off trades durability for speed; never do it in production.",
    ),
    Setting(
        "ingest_buffer_bytes",
        int,
        256 * 1024 * 1024,
        "Bytes of acknowledged-but-not-yet-stored payload allowed before ingest answers 429.",
    ),
    Setting(
        "ingest_backlog_s",
        float,
        1.5,
        "Hold acknowledged-but-unstored data to what storage clears in this many seconds at its measured pace, "
        "so acknowledged events are searchable that soon after (0: only ingest_buffer_bytes applies).",
    ),
    Setting(
        "ingest_wait_s",
        float,
        5.0,
        "How long an ingest request waits for room in that backlog (backpressure) before it is answered 429.",
    ),
    Setting("batch_max_rows", int, 200_000, "Largest block the batcher inserts at once."),
    Setting(
        "batch_max_delay_ms",
        int,
        400,
        "Longest a record waits in the batcher before being inserted (bounds time-to-searchable).",
    ),
    Setting("max_body_bytes", int, 32 * 1024 * 1024, "Largest accepted ingest body, after decompression."),
    Setting(
        "pipeline_workers",
        int,
        -1,
        "Processes that run the log pipeline beside the server (-1: one per CPU core; 0: in the server process).",
    ),
    Setting("pipeline_file", str, "", "YAML file with the log pipeline configuration (parse, redact, enrich)."),
    Setting("syslog_enabled", bool, False, "Listen for syslog (RFC 5424 / 3164)."),
    Setting("syslog_host", str, "127.0.0.1", "Address of the syslog listeners."),
    Setting("syslog_tcp_port", int, 5140, "TCP port for syslog (0 disables TCP)."),
    Setting("syslog_udp_port", int, 5140, "UDP port for syslog (0 disables UDP)."),
    Setting(
        "scrape_config_file",
        str,
        "",
        "A prometheus.yml whose global and scrape_configs sections are scraped (scrape_configs may also sit "
        "in this file).",
    ),
    Setting(
        "retention_interval_s", int, 3600, "How often the retention manager moves data between tiers."
    ),
    Setting("query_timeout_s", float, 30.0, "Longest a search or PromQL query may run before it is cancelled."),
    Setting(
        "query_max_samples", int, 50_000_000, "Most samples one PromQL query may hold at once (Prometheus's --query.max-samples)."
    ),
    Setting("metrics_max_series", int, 1_000_000, "Most active series a project may have; more are refused with a 4xx."),
    Setting(
        "query_pushdown",
        bool,
        False,
        "Evaluate the common dashboard PromQL shapes (sums of rates) in ClickHouse SQL instead of the numpy engine; "
        "same answers, measured slower on the embedded store so far (docs/metrics.md).",
    ),
    Setting(
        "metrics_retention_days",
        int,
        15,
        "Days metric samples are kept (Prometheus's default), unless a project sets its own with "
        "PUT /api/v1/projects/<slug>/retention {\"metrics\": {\"days\": N}}; whole days are dropped.",
    ),
    Setting("traces_retention_days", int, 7, "Days spans are kept; older days are dropped whole."),
    Setting(
        "traces_spanmetrics_flush_s",
        float,
        15.0,
        "How often the span-derived RED series (traces_spanmetrics_*) are written, like a scrape interval.",
    ),
    Setting("log_level", str, "INFO", "The server's own log level."),
    Setting(
        "alerting_file",
        str,
        "",
        "Alertmanager configuration file (route, receivers, inhibit_rules, time_intervals); the YAML key "
        "`alerting:` may instead hold the configuration inline or the file path. Empty: alerts are kept and "
        "shown in the API but sent nowhere.",
    ),
    Setting(
        "secret_key",
        str,
        "",
        "Key that signs links the server hands out (incident acknowledge links). "
        "Empty: generated once and kept in data_dir/secret_key.",
    ),
    Setting(
        "errors_max_event_bytes",
        int,
        1024 * 1024,
        "Largest Sentry event or transaction accepted (uncompressed); a larger one is refused with 413.",
    ),
    Setting(
        "errors_max_attachment_bytes",
        int,
        1024 * 1024,
        "Largest Sentry attachment kept with its event; larger ones are dropped and counted (attachment/too_large).",
    ),
    Setting(
        "errors_retention_days",
        int,
        90,
        "Days error events are kept (issues and their counts stay); older months are dropped whole.",
    ),
    Setting(
        "rule_files",
        str,
        "",
        "Alerting/recording rule files (Prometheus format), as globs: a YAML list, or comma-separated in the "
        "environment. Relative globs are resolved against the config file's directory. Reloaded on SIGHUP "
        "and POST /-/reload.",
    ),
    Setting(
        "evaluation_interval",
        str,
        "1m",
        "How often rule groups without their own `interval` are evaluated (a duration: 15s, 1m).",
    ),
)

_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8040
    data_dir: str = "./data"
    public_url: str = ""
    clickhouse_url: str = ""
    clickhouse_cluster: str = ""
    database_url: str = ""
    admin_token: str = ""
    ingest_token: str = ""
    api_token_cache_s: float = 5.0
    wal_segment_bytes: int = 16 * 1024 * 1024
    wal_fsync: bool = True
    ingest_buffer_bytes: int = 256 * 1024 * 1024
    ingest_backlog_s: float = 1.5
    ingest_wait_s: float = 5.0
    batch_max_rows: int = 200_000
    batch_max_delay_ms: int = 400
    max_body_bytes: int = 32 * 1024 * 1024
    pipeline_workers: int = -1
    pipeline_file: str = ""
    syslog_enabled: bool = False
    syslog_host: str = "127.0.0.1"
    syslog_tcp_port: int = 5140
    syslog_udp_port: int = 5140
    scrape_config_file: str = ""
    retention_interval_s: int = 3600
    query_timeout_s: float = 30.0
    query_max_samples: int = 50_000_000
    metrics_max_series: int = 1_000_000
    query_pushdown: bool = False
    metrics_retention_days: int = 15
    traces_retention_days: int = 7
    traces_spanmetrics_flush_s: float = 15.0
    log_level: str = "INFO"
    alerting_file: str = ""
    secret_key: str = ""
    errors_max_event_bytes: int = 1024 * 1024
    errors_max_attachment_bytes: int = 1024 * 1024
    errors_retention_days: int = 90
    rule_files: str = ""
    evaluation_interval: str = "1m"
    #: Sections the server passes to components as they are (pipeline, later rules/alerting).
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def meta_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'meta.sqlite3'}"


def _coerce(key: str, value: Any) -> Any:
    setting = _BY_KEY[key]
    try:
        if setting.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true/false")
        if setting.type is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(str(value).replace("_", ""))
        if setting.type is float:
            return float(value)
        if isinstance(value, list):  # a YAML list for a list-like setting (rule_files)
            return ",".join(str(v) for v in value)
        return str(value)
    except ValueError as exc:
        raise ConfigError(f"setting {key!r}: bad value {value!r}: {exc}") from None


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings: defaults < YAML file < ``STACKWATCH_*`` variables < explicit overrides.

    Explicit overrides are the CLI flags; they win because the operator typed them last.
    Unknown YAML keys that are not known sections stop start-up: a typo must not silently fall
    back to a default.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if config_file is None and env.get("STACKWATCH_CONFIG"):
        config_file = env["STACKWATCH_CONFIG"]
    if config_file:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r}: invalid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level")
        for key, value in loaded.items():
            if key in _BY_KEY:
                values[key] = _coerce(key, value)
            elif key in _SECTIONS:
                extra[key] = value
            else:
                raise ConfigError(f"config file {str(path)!r}: unknown setting {key!r}")
        if values.get("rule_files"):  # relative globs name files beside the config, as in Prometheus
            values["rule_files"] = ",".join(
                g if Path(g).is_absolute() else str(path.resolve().parent / g)
                for g in (p.strip() for p in values["rule_files"].split(",")) if g
            )
        # An Alertmanager file named relative to the config file sits beside it (as rule files do).
        for_alerting = extra.get("alerting")
        if isinstance(for_alerting, str) and for_alerting and not Path(for_alerting).is_absolute():
            extra["alerting"] = str(path.resolve().parent / for_alerting)
        if values.get("alerting_file") and not Path(values["alerting_file"]).is_absolute():
            values["alerting_file"] = str(path.resolve().parent / values["alerting_file"])
    for setting in SETTINGS:
        name = "STACKWATCH_" + setting.key.upper()
        if name in env:
            values[setting.key] = _coerce(setting.key, env[name])
    for key, value in overrides.items():
        if value is not None:
            if key not in _BY_KEY:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = _coerce(key, value)
    if "evaluation_interval" in values:
        from stackwatch.rules._duration import parse_duration

        try:
            if parse_duration(values["evaluation_interval"]) <= 0:
                raise ValueError("must be positive")
        except ValueError as exc:
            raise ConfigError(f"setting 'evaluation_interval': bad value {values['evaluation_interval']!r}: {exc}") from None
    if values.get("port", 8040) < 0 or values.get("port", 8040) > 65535:
        raise ConfigError(f"setting 'port': bad value {values['port']!r}: out of range 0..65535")
    return Settings(**values, extra=extra)


#: Top-level YAML sections handed to components (their own schema is theirs to validate).
_SECTIONS = ("pipeline", "retention", "rule_files", "evaluation_interval", "alerting", "scrape_configs", "global",
             "incidents")


def settings_markdown() -> str:
    """The reference table for docs/configuration.md."""
    lines = [
        "| YAML key | environment variable | default | meaning |",
        "|---|---|---|---|",
    ]
    for s in SETTINGS:
        default = "(empty)" if s.default == "" else f"`{s.default}`"
        lines.append(f"| `{s.key}` | `STACKWATCH_{s.key.upper()}` | {default} | {s.doc} |")
    return "\n".join(lines) + "\n"


assert {f.name for f in fields(Settings)} - {"extra"} == set(_BY_KEY), "Settings and SETTINGS disagree"

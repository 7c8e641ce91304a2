"""The alerting configuration: Alertmanager's YAML format, parsed and validated.

The server's ``alerting:`` key holds the configuration inline or the path of an Alertmanager file,
so a team moving from Alertmanager keeps its ``alertmanager.yml``. Everything is checked at load:
durations, matchers, regular expressions, receiver names, time interval names and templates. An
error names the path of the bad key (``route.routes[1].matchers[0]: ...``) and stops start-up.

Beyond Alertmanager's keys, one of ours: ``correlation: {labels: [service], window: 10m}``
(alerts that share those label values within the window become one incident key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from stackwatch.alerting.matchers import Matcher, parse_matchers
from stackwatch.alerting.template import Template, TemplateError
from stackwatch.alerting.timeintervals import TimeInterval, parse_time_intervals
from stackwatch.errors import ConfigError

__all__ = [
    "AlertingConfig",
    "AlertingConfigError",
    "GlobalConfig",
    "InhibitRule",
    "Integration",
    "Receiver",
    "RouteConfig",
    "load_alerting_config",
    "parse_alerting_config",
    "parse_duration",
]


class AlertingConfigError(ConfigError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"alerting configuration: {path}: {message}" if path else f"alerting configuration: {message}")
        self.path = path


_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


def parse_duration(text: Any, path: str = "") -> timedelta:
    """A Prometheus duration: ``30s``, ``5m``, ``1h30m``, ``2d``, ``1w``, ``500ms``, ``0``."""
    s = str(text).strip()
    m = _DURATION.match(s)
    if s == "0":
        return timedelta(0)
    if not s or not m or not any(m.groups()):
        raise AlertingConfigError(path, f"{text!r} is not a duration (like 30s, 5m, 1h30m, 2d)")
    seconds = sum(int(g) * unit for g, unit in zip(m.groups(), _UNITS, strict=True) if g)
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class GlobalConfig:
    resolve_timeout: timedelta = timedelta(minutes=5)
    smtp_from: str = ""
    smtp_smarthost: str = ""
    smtp_hello: str = "localhost"
    smtp_auth_username: str = ""
    smtp_auth_password: str = ""
    smtp_auth_identity: str = ""
    smtp_require_tls: bool = True
    slack_api_url: str = ""
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    http_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Integration:
    """One notifier of a receiver (``webhook_configs[0]`` ...) with its validated settings."""

    kind: str  # webhook | slack | email | pagerduty | msteams | apprise
    index: int
    send_resolved: bool
    params: dict[str, Any]
    templates: dict[str, Template]
    #: The configuration key it came from when that is not the notifier kind (telegram via apprise).
    source: str = ""

    @property
    def name(self) -> str:
        """Unique within its receiver: the config list and position, like ``webhook[1]``."""
        return f"{self.source or self.kind}[{self.index}]"


@dataclass(frozen=True)
class Receiver:
    name: str
    integrations: tuple[Integration, ...] = ()


@dataclass
class RouteConfig:
    receiver: str
    group_by: tuple[str, ...] = ()
    group_by_all: bool = False
    group_wait: timedelta = timedelta(seconds=30)
    group_interval: timedelta = timedelta(minutes=5)
    repeat_interval: timedelta = timedelta(hours=4)
    matchers: tuple[Matcher, ...] = ()
    continue_: bool = False
    routes: list[RouteConfig] = field(default_factory=list)
    mute_time_intervals: tuple[str, ...] = ()
    active_time_intervals: tuple[str, ...] = ()
    path: str = "route"


@dataclass(frozen=True)
class InhibitRule:
    source_matchers: tuple[Matcher, ...]
    target_matchers: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()


@dataclass(frozen=True)
class Correlation:
    labels: tuple[str, ...] = ()
    window: timedelta = timedelta(minutes=10)


@dataclass
class AlertingConfig:
    global_: GlobalConfig
    route: RouteConfig
    receivers: dict[str, Receiver]
    inhibit_rules: list[InhibitRule] = field(default_factory=list)
    time_intervals: dict[str, tuple[TimeInterval, ...]] = field(default_factory=dict)
    correlation: Correlation = field(default_factory=Correlation)
    #: The configuration as given (secrets included); /api/v2/status shows a redacted copy.
    original: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def default(cls) -> AlertingConfig:
        """No configuration: alerts are stored, grouped and visible in the API, sent nowhere."""
        return parse_alerting_config({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]})


# --- helpers ------------------------------------------------------------------------------------

def _mapping(raw: Any, path: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise AlertingConfigError(path, f"expected a mapping, got {type(raw).__name__}")
    return raw


def _list(raw: Any, path: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise AlertingConfigError(path, f"expected a list, got {type(raw).__name__}")
    return raw


def _known(raw: dict[str, Any], keys: set[str], path: str) -> None:
    for key in raw:
        if key not in keys:
            where = f"{path}.{key}" if path else str(key)
            raise AlertingConfigError(where, "unknown key")


def _bool(raw: Any, path: str) -> bool:
    if isinstance(raw, bool):
        return raw
    raise AlertingConfigError(path, f"expected true or false, got {raw!r}")


def _str(raw: Any, path: str) -> str:
    if isinstance(raw, str | int | float) and not isinstance(raw, bool):
        return str(raw)
    raise AlertingConfigError(path, f"expected a string, got {type(raw).__name__}")


def _matchers(raw: dict[str, Any], prefix: str, path: str) -> tuple[Matcher, ...]:
    """``<prefix>matchers`` (string list), ``<prefix>match`` and ``<prefix>match_re`` (legacy maps)."""
    out: list[Matcher] = []
    key = f"{prefix}matchers"
    for i, item in enumerate(_list(raw.get(key), f"{path}.{key}")):
        where = f"{path}.{key}[{i}]"
        try:
            out.extend(parse_matchers(_str(item, where)))
        except ValueError as exc:
            raise AlertingConfigError(where, str(exc)) from None
    for legacy, op in ((f"{prefix}match", "="), (f"{prefix}match_re", "=~")):
        for name, value in _mapping(raw.get(legacy), f"{path}.{legacy}").items():
            where = f"{path}.{legacy}.{name}"
            try:
                out.append(Matcher.create(str(name), op, _str(value, where)))
            except ValueError as exc:
                raise AlertingConfigError(where, str(exc)) from None
    return tuple(out)


_HTTP_KEYS = {"basic_auth", "authorization", "bearer_token", "tls_config", "proxy_url", "follow_redirects",
              "enable_http2"}

# kind -> (config key, known params, templated params, required params, send_resolved default)
_KINDS: dict[str, tuple[str, set[str], set[str], set[str], bool]] = {
    "webhook": ("webhook_configs", {"url", "url_file", "max_alerts", "timeout"}, set(), set(), True),
    "slack": ("slack_configs",
              {"api_url", "api_url_file", "channel", "username", "icon_emoji", "icon_url", "title", "title_link",
               "text", "pretext", "color", "footer", "fallback", "link_names", "short_fields", "mrkdwn_in",
               "actions", "fields", "callback_id", "image_url", "thumb_url", "timeout"},
              {"channel", "username", "title", "title_link", "text", "pretext", "color", "footer", "fallback"},
              set(), False),
    "email": ("email_configs",
              {"to", "from", "smarthost", "hello", "auth_username", "auth_password", "auth_password_file",
               "auth_secret", "auth_identity", "require_tls", "tls_config", "headers", "html", "text", "timeout"},
              {"to", "from", "html", "text"}, {"to"}, False),
    "pagerduty": ("pagerduty_configs",
                  {"routing_key", "routing_key_file", "service_key", "service_key_file", "url", "client",
                   "client_url", "description", "severity", "details", "images", "links", "class", "component",
                   "group", "source", "timeout"},
                  {"client", "client_url", "description", "severity", "class", "component", "group", "source"},
                  set(), True),
    "msteams": ("msteams_configs", {"webhook_url", "webhook_url_file", "title", "summary", "text", "card", "timeout"},
                {"title", "summary", "text"}, set(), True),
    "msteamsv2": ("msteamsv2_configs", {"webhook_url", "webhook_url_file", "title", "text", "timeout"},
                  {"title", "text"}, set(), True),
    "apprise": ("apprise_configs", {"urls", "title", "body", "timeout"}, {"title", "body"}, {"urls"}, True),
}
_UNSUPPORTED = ("victorops_configs", "sns_configs", "webex_configs", "wechat_configs", "jira_configs",
                "rocketchat_configs")


def _secret(raw: dict[str, Any], key: str, path: str) -> str:
    if raw.get(f"{key}_file"):
        try:
            return Path(str(raw[f"{key}_file"])).read_text().strip()
        except OSError as exc:
            raise AlertingConfigError(f"{path}.{key}_file", f"cannot read it: {exc.strerror}") from None
    value = raw.get(key)
    if value in (None, ""):
        raise AlertingConfigError(f"{path}.{key}", "required")
    return _str(value, f"{path}.{key}")


def _telegram(raw: dict[str, Any], path: str) -> str:
    return f"tgram://{_secret(raw, 'bot_token', path)}/{_str(raw.get('chat_id', ''), path + '.chat_id')}"


def _discord(raw: dict[str, Any], path: str) -> str:
    url = _secret(raw, "webhook_url", path)
    m = re.search(r"/api/webhooks/(\d+)/([^/?#]+)", url)
    if not m:
        raise AlertingConfigError(f"{path}.webhook_url", "expected https://discord.com/api/webhooks/<id>/<token>")
    return f"discord://{m.group(1)}/{m.group(2)}"


def _pushover(raw: dict[str, Any], path: str) -> str:
    return f"pover://{_secret(raw, 'user_key', path)}@{_secret(raw, 'token', path)}"


def _opsgenie(raw: dict[str, Any], path: str) -> str:
    return f"opsgenie://{_secret(raw, 'api_key', path)}"


#: Alertmanager receivers we deliver through apprise: config key -> (apprise URL builder, keys it reads).
_VIA_APPRISE: dict[str, tuple[Any, set[str]]] = {
    "telegram_configs": (_telegram, {"bot_token", "bot_token_file", "chat_id", "message", "parse_mode", "api_url",
                                     "disable_notifications", "message_thread_id"}),
    "discord_configs": (_discord, {"webhook_url", "webhook_url_file", "title", "message", "content", "username",
                                   "avatar_url"}),
    "pushover_configs": (_pushover, {"user_key", "user_key_file", "token", "token_file", "title", "message", "url",
                                     "url_title", "priority", "sound", "retry", "expire", "html", "device", "ttl"}),
    "opsgenie_configs": (_opsgenie, {"api_key", "api_key_file", "api_url", "message", "description", "source",
                                     "details", "responders", "tags", "note", "priority", "entity", "actions",
                                     "update_alerts"}),
}


def _via_apprise(key: str, index: int, raw: Any, path: str, glob: GlobalConfig) -> Integration:
    """An Alertmanager receiver config (Telegram, Discord, Pushover, OpsGenie) as an apprise notifier."""
    build, known = _VIA_APPRISE[key]
    r = _mapping(raw, path)
    _known(r, known | {"send_resolved", "http_config"}, path)
    params: dict[str, Any] = {"urls": [build(r, path)], "send_resolved": r.get("send_resolved", True)}
    if r.get("title"):
        params["title"] = r["title"]
    if r.get("message"):
        params["body"] = r["message"]
    return _integration("apprise", index, params, path, glob)


def _read_secret_file(params: dict[str, Any], key: str, path: str) -> None:
    file_key = f"{key}_file"
    if params.get(file_key):
        try:
            params[key] = Path(str(params[file_key])).read_text().strip()
        except OSError as exc:
            raise AlertingConfigError(f"{path}.{file_key}", f"cannot read {params[file_key]!r}: {exc.strerror}") from None


def _integration(kind: str, index: int, raw: Any, path: str, glob: GlobalConfig) -> Integration:
    _, known, templated, required, resolved_default = _KINDS[kind]
    params = dict(_mapping(raw, path))
    _known(params, known | {"send_resolved", "http_config"}, path)
    for key in sorted(required):
        if not params.get(key):
            raise AlertingConfigError(f"{path}.{key}", "required")
    send_resolved = _bool(params.pop("send_resolved", resolved_default), f"{path}.send_resolved")
    http = _mapping(params.get("http_config", glob.http_config), f"{path}.http_config")
    _known(http, _HTTP_KEYS, f"{path}.http_config")
    params["http_config"] = http
    if "timeout" in params:
        params["timeout"] = parse_duration(params["timeout"], f"{path}.timeout").total_seconds()
    if kind == "webhook":
        _read_secret_file(params, "url", path)
        if not params.get("url"):
            raise AlertingConfigError(f"{path}.url", "required (or url_file)")
        params["max_alerts"] = int(params.get("max_alerts") or 0)
    elif kind == "slack":
        _read_secret_file(params, "api_url", path)
        params.setdefault("api_url", glob.slack_api_url)
        if not params.get("api_url"):
            raise AlertingConfigError(f"{path}.api_url", "required (here or as global.slack_api_url)")
    elif kind == "email":
        _read_secret_file(params, "auth_password", path)
        params.setdefault("from", glob.smtp_from)
        params.setdefault("smarthost", glob.smtp_smarthost)
        params.setdefault("hello", glob.smtp_hello)
        params.setdefault("auth_username", glob.smtp_auth_username)
        params.setdefault("auth_password", glob.smtp_auth_password)
        params.setdefault("auth_identity", glob.smtp_auth_identity)
        params["require_tls"] = _bool(params.get("require_tls", glob.smtp_require_tls), f"{path}.require_tls")
        for key in ("from", "smarthost"):
            if not params.get(key):
                raise AlertingConfigError(f"{path}.{key}", f"required (here or as global.smtp_{key})")
        host, sep, port = str(params["smarthost"]).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise AlertingConfigError(f"{path}.smarthost", f"{params['smarthost']!r} must be host:port")
        params["headers"] = {str(k): str(v) for k, v in _mapping(params.get("headers"), f"{path}.headers").items()}
        for key, value in params["headers"].items():
            templated.add(f"headers.{key}")
            params[f"headers.{key}"] = value
    elif kind == "pagerduty":
        _read_secret_file(params, "routing_key", path)
        _read_secret_file(params, "service_key", path)
        if not params.get("routing_key"):
            if params.get("service_key"):
                raise AlertingConfigError(f"{path}.service_key",
                                          "the Events API v1 service_key is not supported; use an Events v2 routing_key")
            raise AlertingConfigError(f"{path}.routing_key", "required")
        params.setdefault("url", glob.pagerduty_url)
        params["details"] = {str(k): str(v) for k, v in _mapping(params.get("details"), f"{path}.details").items()}
        for key, value in params["details"].items():
            templated.add(f"details.{key}")
            params[f"details.{key}"] = value
    elif kind in ("msteams", "msteamsv2"):
        _read_secret_file(params, "webhook_url", path)
        if not params.get("webhook_url"):
            raise AlertingConfigError(f"{path}.webhook_url", "required (or webhook_url_file)")
        card = params.get("card", "adaptive" if kind == "msteamsv2" else "messagecard")
        if card not in ("messagecard", "adaptive"):
            raise AlertingConfigError(f"{path}.card", f"{card!r}: use messagecard or adaptive")
        params["card"] = card
    elif kind == "apprise":
        urls = params["urls"]
        if isinstance(urls, str):
            urls = [urls]
        params["urls"] = [_str(u, f"{path}.urls[{i}]") for i, u in enumerate(_list(urls, f"{path}.urls"))]
    templates: dict[str, Template] = {}
    for key in sorted(templated):
        value = params.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, list):  # email 'to' may be a list in some configs
            value = ", ".join(str(v) for v in value)
        try:
            templates[key] = Template(_str(value, f"{path}.{key}"))
        except TemplateError as exc:
            raise AlertingConfigError(f"{path}.{key}", str(exc)) from None
    return Integration(kind if kind != "msteamsv2" else "msteams", index, send_resolved, params, templates)


def _global(raw: Any) -> GlobalConfig:
    g = _mapping(raw, "global")
    fields_ = {f for f in GlobalConfig.__dataclass_fields__ if f != "http_config"}
    _known(g, fields_ | {"http_config", "smtp_auth_password_file", "slack_api_url_file", "smtp_auth_secret",
                         "opsgenie_api_key", "opsgenie_api_url", "victorops_api_url", "victorops_api_key",
                         "wechat_api_url", "webex_api_url", "telegram_api_url"}, "global")
    kwargs: dict[str, Any] = {}
    for key in fields_:
        if key not in g:
            continue
        if key == "resolve_timeout":
            kwargs[key] = parse_duration(g[key], "global.resolve_timeout")
        elif key == "smtp_require_tls":
            kwargs[key] = _bool(g[key], "global.smtp_require_tls")
        else:
            kwargs[key] = _str(g[key], f"global.{key}")
    for key in ("smtp_auth_password", "slack_api_url"):
        if g.get(f"{key}_file"):
            try:
                kwargs[key] = Path(str(g[f"{key}_file"])).read_text().strip()
            except OSError as exc:
                raise AlertingConfigError(f"global.{key}_file", f"cannot read it: {exc.strerror}") from None
    if "http_config" in g:
        kwargs["http_config"] = _mapping(g["http_config"], "global.http_config")
    return GlobalConfig(**kwargs)


_ROUTE_KEYS = {"receiver", "group_by", "group_wait", "group_interval", "repeat_interval", "matchers", "match",
               "match_re", "continue", "routes", "mute_time_intervals", "active_time_intervals"}


def _route(raw: Any, path: str, parent: RouteConfig | None) -> RouteConfig:
    r = _mapping(raw, path)
    _known(r, _ROUTE_KEYS, path)
    receiver = _str(r["receiver"], f"{path}.receiver") if r.get("receiver") else (parent.receiver if parent else "")
    if not receiver:
        raise AlertingConfigError(f"{path}.receiver", "the root route needs a receiver")
    group_by: tuple[str, ...] = parent.group_by if parent else ()
    group_by_all = parent.group_by_all if parent else False
    if "group_by" in r:
        names = [_str(n, f"{path}.group_by[{i}]") for i, n in enumerate(_list(r["group_by"], f"{path}.group_by"))]
        group_by_all = "..." in names
        if group_by_all and len(names) > 1:
            raise AlertingConfigError(f"{path}.group_by", "'...' must be the only entry when present")
        if len(set(names)) != len(names):
            raise AlertingConfigError(f"{path}.group_by", "duplicate label name")
        group_by = () if group_by_all else tuple(names)
    out = RouteConfig(
        receiver=receiver,
        group_by=group_by,
        group_by_all=group_by_all,
        group_wait=parse_duration(r["group_wait"], f"{path}.group_wait") if "group_wait" in r
        else (parent.group_wait if parent else timedelta(seconds=30)),
        group_interval=parse_duration(r["group_interval"], f"{path}.group_interval") if "group_interval" in r
        else (parent.group_interval if parent else timedelta(minutes=5)),
        repeat_interval=parse_duration(r["repeat_interval"], f"{path}.repeat_interval") if "repeat_interval" in r
        else (parent.repeat_interval if parent else timedelta(hours=4)),
        matchers=_matchers(r, "", path),
        continue_=_bool(r.get("continue", False), f"{path}.continue"),
        mute_time_intervals=tuple(_str(n, f"{path}.mute_time_intervals[{i}]")
                                  for i, n in enumerate(_list(r.get("mute_time_intervals"), f"{path}.mute_time_intervals"))),
        active_time_intervals=tuple(_str(n, f"{path}.active_time_intervals[{i}]")
                                    for i, n in enumerate(_list(r.get("active_time_intervals"),
                                                                f"{path}.active_time_intervals"))),
        path=path,
    )
    if out.group_interval <= timedelta(0):
        raise AlertingConfigError(f"{path}.group_interval", "must be greater than 0")
    if out.repeat_interval <= timedelta(0):
        raise AlertingConfigError(f"{path}.repeat_interval", "must be greater than 0")
    if parent is None:
        if out.matchers:
            raise AlertingConfigError(f"{path}.matchers", "the root route must not have matchers")
        if out.continue_:
            raise AlertingConfigError(f"{path}.continue", "the root route cannot have continue set")
        if out.mute_time_intervals or out.active_time_intervals:
            raise AlertingConfigError(f"{path}.mute_time_intervals", "the root route cannot have time intervals")
    out.routes = [_route(child, f"{path}.routes[{i}]", out) for i, child in enumerate(_list(r.get("routes"), f"{path}.routes"))]
    return out


def _walk(route: RouteConfig) -> list[RouteConfig]:
    out = [route]
    for child in route.routes:
        out.extend(_walk(child))
    return out


_TOP_KEYS = {"global", "route", "receivers", "inhibit_rules", "time_intervals", "mute_time_intervals", "templates",
             "correlation"}


def parse_alerting_config(raw: Any) -> AlertingConfig:
    """Validate an Alertmanager configuration (already loaded from YAML) and build its objects."""
    top = _mapping(raw, "")
    _known(top, _TOP_KEYS, "")
    if top.get("templates"):
        raise AlertingConfigError("templates", "template files are not supported; put the template text in the "
                                  "receiver's fields (title, text, html...)")
    glob = _global(top.get("global"))
    if "route" not in top:
        raise AlertingConfigError("route", "required")
    route = _route(top["route"], "route", None)

    receivers: dict[str, Receiver] = {}
    for i, rraw in enumerate(_list(top.get("receivers"), "receivers")):
        path = f"receivers[{i}]"
        r = _mapping(rraw, path)
        name = _str(r.get("name") or "", f"{path}.name")
        if not name:
            raise AlertingConfigError(f"{path}.name", "required")
        if name in receivers:
            raise AlertingConfigError(f"{path}.name", f"receiver {name!r} is defined twice")
        _known(r, {"name"} | {v[0] for v in _KINDS.values()} | set(_UNSUPPORTED) | set(_VIA_APPRISE), path)
        for key in _UNSUPPORTED:
            if key in r:
                raise AlertingConfigError(f"{path}.{key}", "not supported natively; use apprise_configs with the "
                                          "service's apprise URL (https://github.com/caronc/apprise/wiki)")
        integrations: list[Integration] = []
        for kind, (key, *_rest) in _KINDS.items():
            for j, iraw in enumerate(_list(r.get(key), f"{path}.{key}")):
                made = _integration(kind, j, iraw, f"{path}.{key}[{j}]", glob)
                integrations.append(replace(made, source=kind) if kind == "msteamsv2" else made)
        for key in _VIA_APPRISE:
            for j, iraw in enumerate(_list(r.get(key), f"{path}.{key}")):
                integrations.append(replace(_via_apprise(key, j, iraw, f"{path}.{key}[{j}]", glob),
                                            source=key.removesuffix("_configs")))
        receivers[name] = Receiver(name, tuple(integrations))

    intervals: dict[str, tuple[TimeInterval, ...]] = {}
    for key in ("time_intervals", "mute_time_intervals"):
        for i, traw in enumerate(_list(top.get(key), key)):
            path = f"{key}[{i}]"
            t = _mapping(traw, path)
            _known(t, {"name", "time_intervals"}, path)
            name = _str(t.get("name") or "", f"{path}.name")
            if not name:
                raise AlertingConfigError(f"{path}.name", "required")
            if name in intervals:
                raise AlertingConfigError(f"{path}.name", f"time interval {name!r} is defined twice")
            try:
                intervals[name] = parse_time_intervals(t.get("time_intervals") or [], f"{path}.time_intervals")
            except ValueError as exc:
                raise AlertingConfigError("", str(exc)) from None

    for node in _walk(route):
        if node.receiver not in receivers:
            raise AlertingConfigError(f"{node.path}.receiver", f"undefined receiver {node.receiver!r}")
        for key in ("mute_time_intervals", "active_time_intervals"):
            for name in getattr(node, key):
                if name not in intervals:
                    raise AlertingConfigError(f"{node.path}.{key}", f"undefined time interval {name!r}")

    inhibit: list[InhibitRule] = []
    for i, iraw in enumerate(_list(top.get("inhibit_rules"), "inhibit_rules")):
        path = f"inhibit_rules[{i}]"
        ir = _mapping(iraw, path)
        _known(ir, {"source_matchers", "target_matchers", "source_match", "source_match_re", "target_match",
                    "target_match_re", "equal"}, path)
        equal = ir.get("equal") or []
        if isinstance(equal, str):
            equal = [equal]
        inhibit.append(InhibitRule(_matchers(ir, "source_", path), _matchers(ir, "target_", path),
                                   tuple(_str(e, f"{path}.equal[{k}]") for k, e in enumerate(_list(equal, f"{path}.equal")))))

    corr_raw = _mapping(top.get("correlation"), "correlation")
    _known(corr_raw, {"labels", "window"}, "correlation")
    correlation = Correlation(
        tuple(_str(n, f"correlation.labels[{i}]") for i, n in enumerate(_list(corr_raw.get("labels"), "correlation.labels"))),
        parse_duration(corr_raw["window"], "correlation.window") if "window" in corr_raw else timedelta(minutes=10),
    )
    return AlertingConfig(glob, route, receivers, inhibit, intervals, correlation, original=top)


def load_alerting_config(value: Any, base_dir: Path | None = None) -> AlertingConfig:
    """The ``alerting:`` setting: a mapping (inline configuration), a file path, or nothing."""
    if value is None or value == "" or value == {}:
        return AlertingConfig.default()
    if isinstance(value, str):
        path = Path(value)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"setting 'alerting': cannot read {str(path)!r}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"setting 'alerting': {str(path)!r} is not valid YAML: {exc}") from None
        return parse_alerting_config(loaded)
    if isinstance(value, dict):
        return parse_alerting_config(value)
    raise ConfigError("setting 'alerting': expected an Alertmanager configuration (a mapping) or a file path")


_SECRET_KEYS = re.compile(r"(password|secret|token|routing_key|service_key|api_url|webhook_url|^url$|urls|credentials|"
                          r"api_key)", re.IGNORECASE)


def redacted(value: Any, key: str = "") -> Any:
    """The configuration with secrets (passwords, keys, webhook URLs) replaced, for the status API."""
    if isinstance(value, dict):
        return {k: redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, key) for v in value]
    if key and _SECRET_KEYS.search(key) and not key.endswith("_file") and value not in (None, ""):
        return "<secret>"
    return value

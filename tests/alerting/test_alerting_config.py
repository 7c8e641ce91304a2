"""The Alertmanager configuration parser, matchers, time intervals, templates and severities."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.alerting.config import (
    AlertingConfigError,
    load_alerting_config,
    parse_alerting_config,
    parse_duration,
)
from stackwatch.alerting.matchers import parse_matchers
from stackwatch.alerting.routing import build_routes
from stackwatch.alerting.severity import SEVERITIES, at_least, parse_severity
from stackwatch.alerting.template import Template, TemplateError
from stackwatch.alerting.timeintervals import parse_time_interval
from stackwatch.errors import ConfigError

# The example from Alertmanager's documentation style, with every section we accept.
FULL = """
global:
  resolve_timeout: 2m
  smtp_smarthost: mail.example.com:587
  smtp_from: alertmanager@example.com
  smtp_auth_username: alertmanager
  smtp_auth_password: password
  slack_api_url: https://hooks.slack.com/services/T/B/X
route:
  receiver: team-X-mails
  group_by: ['alertname', 'cluster', 'service']
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 3h
  routes:
    - matchers: [service=~"foo1|foo2|baz"]
      receiver: team-X-mails
      routes:
        - matchers: [severity="critical"]
          receiver: team-X-pager
    - match: {service: files}
      receiver: team-Y-mails
      mute_time_intervals: [offhours]
      routes:
        - match_re: {severity: crit.*}
          receiver: team-Y-pager
    - matchers: ['{service="database", severity!="info"}']
      receiver: team-DB-pager
      group_by: [alertname, cluster, database]
      continue: true
    - receiver: catch-all-slack
      group_by: ['...']
inhibit_rules:
  - source_matchers: [severity="critical"]
    target_matchers: [severity="warning"]
    equal: [alertname, cluster, service]
  - source_match: {severity: P1}
    target_match_re: {severity: "P3|P4"}
receivers:
  - name: team-X-mails
    email_configs: [{to: team-X+alerts@example.org}]
  - name: team-X-pager
    email_configs: [{to: team-X+alerts-critical@example.org}]
    pagerduty_configs: [{routing_key: abc}]
  - name: team-Y-mails
    email_configs: [{to: team-Y+alerts@example.org}]
  - name: team-Y-pager
    pagerduty_configs: [{routing_key: def}]
    msteams_configs: [{webhook_url: "https://example.webhook.office.com/x"}]
  - name: team-DB-pager
    webhook_configs: [{url: "http://127.0.0.1:5001/", send_resolved: false}]
    apprise_configs: [{urls: ["tgram://bottoken/ChatID"]}]
  - name: catch-all-slack
    slack_configs: [{channel: '#alerts'}]
time_intervals:
  - name: offhours
    time_intervals:
      - times: [{start_time: "18:00", end_time: "24:00"}]
        weekdays: ['monday:friday']
        location: America/New_York
      - weekdays: [saturday, sunday]
"""


def test_a_full_alertmanager_configuration_parses() -> None:
    cfg = parse_alerting_config(yaml.safe_load(FULL))
    assert cfg.global_.resolve_timeout == timedelta(minutes=2)
    assert cfg.route.repeat_interval == timedelta(hours=3)
    assert cfg.route.routes[0].routes[0].group_by == ("alertname", "cluster", "service")  # inherited
    assert cfg.route.routes[3].group_by_all
    assert [i.kind for i in cfg.receivers["team-X-pager"].integrations] == ["email", "pagerduty"]
    assert cfg.receivers["catch-all-slack"].integrations[0].params["api_url"].startswith("https://hooks.slack.com")
    mail = cfg.receivers["team-X-mails"].integrations[0]
    assert mail.params["smarthost"] == "mail.example.com:587" and mail.params["auth_username"] == "alertmanager"
    assert not mail.send_resolved and cfg.receivers["team-Y-pager"].integrations[0].send_resolved
    assert len(cfg.inhibit_rules) == 2 and str(cfg.inhibit_rules[1].target_matchers[0]) == 'severity=~"P3|P4"'

    root = build_routes(cfg.route)

    def receivers(**labels: str) -> list[str]:
        return [r.config.receiver for r in root.match(labels)]

    assert receivers(service="foo1", severity="critical") == ["team-X-pager"]
    assert receivers(service="foo2") == ["team-X-mails"]
    assert receivers(service="files", severity="critical") == ["team-Y-pager"]
    assert receivers(service="database", severity="critical") == ["team-DB-pager", "catch-all-slack"]
    assert receivers(service="database", severity="info") == ["catch-all-slack"]
    assert receivers(service="other") == ["catch-all-slack"]


@pytest.mark.parametrize(("patch", "path", "message"), [
    ({"route": {"receiver": "nope"}}, "route.receiver", "undefined receiver 'nope'"),
    ({"route": {"receiver": "a", "group_wait": "5 minutes"}}, "route.group_wait", "not a duration"),
    ({"route": {"receiver": "a", "routes": [{"matchers": ['team=~"(db"']}]}}, "route.routes[0].matchers[0]",
     "bad regular expression"),
    ({"route": {"receiver": "a", "routes": [{}, {"receiver": "b"}]}}, "route.routes[1].receiver", "undefined"),
    ({"route": {"receiver": "a", "routes": [{"mute_time_intervals": ["x"]}]}},
     "route.routes[0].mute_time_intervals", "undefined time interval 'x'"),
    ({"route": {"receiver": "a", "group_by": ["...", "x"]}}, "route.group_by", "'...' must be the only"),
    ({"route": {"receiver": "a", "recevier": "a"}}, "route.recevier", "unknown key"),
    ({"receivers": [{"name": "a", "webhook_configs": [{}]}]}, "receivers[0].webhook_configs[0].url", "required"),
    ({"receivers": [{"name": "a", "slack_configs": [{"api_url": "http://x", "title": "{{ .Foo "}]}]},
     "receivers[0].slack_configs[0].title", "unclosed action"),
    ({"receivers": [{"name": "a", "email_configs": [{"to": "x@y"}]}]}, "receivers[0].email_configs[0].from",
     "required"),
    ({"receivers": [{"name": "a", "pagerduty_configs": [{"service_key": "k"}]}]},
     "receivers[0].pagerduty_configs[0].service_key", "Events API v1"),
    ({"receivers": [{"name": "a", "victorops_configs": [{}]}]}, "receivers[0].victorops_configs", "apprise"),
    ({"receivers": [{"name": "a", "telegram_configs": [{"chat_id": 1}]}]},
     "receivers[0].telegram_configs[0].bot_token", "required"),
    ({"receivers": [{"name": "a", "discord_configs": [{"webhook_url": "https://x/y"}]}]},
     "receivers[0].discord_configs[0].webhook_url", "api/webhooks"),
    ({"receivers": [{"name": "a"}, {"name": "a"}]}, "receivers[1].name", "defined twice"),
    ({"time_intervals": [{"name": "t", "time_intervals": [{"times": [{"start_time": "25:00", "end_time": "26:00"}]}]}]},
     "time_intervals[0].time_intervals[0].times[0].start_time", "out of range"),
    ({"time_intervals": [{"name": "t", "time_intervals": [{"location": "Mars/Olympus"}]}]},
     "time_intervals[0].time_intervals[0].location", "unknown time zone"),
    ({"inhibit_rules": [{"source_matchers": ["a=b"], "equal": "cluster", "target_matchers": ["x"]}]},
     "inhibit_rules[0].target_matchers[0]", "expected one of"),
])
def test_errors_name_the_path_of_the_bad_key(patch: dict[str, Any], path: str, message: str) -> None:
    raw: dict[str, Any] = {"route": {"receiver": "a"}, "receivers": [{"name": "a"}]}
    raw.update(patch)
    with pytest.raises(AlertingConfigError) as info:
        parse_alerting_config(raw)
    assert f"{path}: " in str(info.value) and message in str(info.value)


def test_alerting_setting_takes_a_file_path_or_inline_config(tmp_path: Path) -> None:
    f = tmp_path / "alertmanager.yml"
    f.write_text(FULL)
    assert set(load_alerting_config(str(f)).receivers) >= {"team-X-pager", "catch-all-slack"}
    assert load_alerting_config({"route": {"receiver": "x"}, "receivers": [{"name": "x"}]}).route.receiver == "x"
    assert load_alerting_config(None).route.receiver == "null"
    with pytest.raises(ConfigError, match="cannot read"):
        load_alerting_config(str(tmp_path / "missing.yml"))


def test_durations() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration("500ms") == timedelta(milliseconds=500)
    assert parse_duration("0") == timedelta(0)
    for bad in ("", "5", "1.5h", "m5", "5 m"):
        with pytest.raises(AlertingConfigError):
            parse_duration(bad)


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ('severity="critical"', {"severity": "critical"}, True),
    ("severity=critical", {"severity": "critical"}, True),
    ('team=~"db|cache"', {"team": "dba"}, False),  # anchored
    ('team=~"db|cache"', {"team": "cache"}, True),
    ('env!~"dev.*"', {"env": "prod"}, True),
    ('env!~"dev.*"', {"env": "dev-1"}, False),
    ('missing=""', {}, True),
    ('missing!=""', {}, False),
    ('{a="1", b!="2"}', {"a": "1", "b": "3"}, True),
    ('a="x,y", b="q\\"uote"', {"a": "x,y", "b": 'q"uote'}, True),
])
def test_matchers(text: str, labels: dict[str, str], expected: bool) -> None:
    assert all(m.matches(labels) for m in parse_matchers(text)) is expected


def test_time_interval_ranges_and_zones() -> None:
    ti = parse_time_interval({"weekdays": ["monday:friday"], "times": [{"start_time": "09:00", "end_time": "17:00"}],
                              "days_of_month": ["-7:-1"], "months": ["january:march", "12"], "years": ["2026"],
                              "location": "Asia/Tokyo"})
    # Monday 2026-03-30 09:30 in Tokyo = 00:30 UTC; the last 7 days of March
    assert ti.contains(datetime(2026, 3, 30, 0, 30, tzinfo=UTC))
    assert not ti.contains(datetime(2026, 3, 30, 8, 0, tzinfo=UTC))  # 17:00 Tokyo: end excluded
    assert not ti.contains(datetime(2026, 3, 16, 0, 30, tzinfo=UTC))  # not in the last week
    assert not ti.contains(datetime(2026, 4, 27, 0, 30, tzinfo=UTC))  # April
    assert ti.to_json()["weekdays"] == ["monday:friday"]


def test_template_subset() -> None:
    data = {"Status": "firing", "CommonLabels": {"alertname": "Disk", "severity": "P2"},
            "Alerts": [{"Labels": {"instance": "a"}, "Annotations": {"summary": "90%"}},
                       {"Labels": {"instance": "b"}, "Annotations": {}}], "ExternalURL": "http://sw", "Names": ["x", "y"]}
    t = Template("{{ .Status | toUpper }} {{ .CommonLabels.alertname }}{{ if eq .CommonLabels.severity \"P0\" \"P1\" }}"
                 " PAGE{{ else if .CommonLabels.severity }} ({{ .CommonLabels.severity | toLower }}){{ end }}\n"
                 "{{- range .Alerts }}\n* {{ .Labels.instance }}: {{ .Annotations.summary | default \"n/a\" }}"
                 " {{ $.ExternalURL }}{{ end }}\n{{ len .Alerts }} {{ index .CommonLabels \"alertname\" }}"
                 "{{/* a comment */}} {{ printf \"%.1f%%\" 92.345 }} {{ join \",\" .Names }}")
    assert t.render(data) == ("FIRING Disk (p2)\n* a: 90% http://sw\n* b: n/a http://sw\n2 Disk 92.3% x,y")
    assert Template("{{ range .Missing }}x{{ else }}none{{ end }}").render({}) == "none"
    for bad in ("{{ .A ", "{{ if .A }}x", "{{ end }}", "{{ nosuchfunc .A }}", "{{ with .A }}{{ end }}",
                "{{ $x := 1 }}"):
        with pytest.raises(TemplateError):
            Template(bad)


def test_severities_and_their_aliases() -> None:
    assert [s.code for s in SEVERITIES] == ["P0", "P1", "P2", "P3", "P4"]
    assert parse_severity("critical").code == "P0"  # type: ignore[union-attr]
    assert parse_severity("warning").code == "P2"  # type: ignore[union-attr]
    assert parse_severity("p3").name == "low"  # type: ignore[union-attr]
    assert parse_severity("whatever") is None
    assert SEVERITIES[0].ack_within == timedelta(minutes=5) and SEVERITIES[0].pages
    assert at_least({"severity": "high"}, "P1") and not at_least({"severity": "low"}, "P1")
    assert not at_least({}, "P4")
    with pytest.raises(ValueError):
        at_least({}, "P9")


DOC = Path(__file__).resolve().parents[2] / "docs" / "alerting-notifications.md"


def test_the_documented_configuration_and_template_examples_load() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    config = yaml.safe_load(blocks[0])["alerting"]
    cfg = load_alerting_config(config)
    assert cfg.correlation.labels == ("service",)
    assert [r.config.receiver for r in build_routes(cfg.route).match({"severity": "P1", "team": "db"})] == [
        "pager", "db-slack"]
    slack = yaml.safe_load(blocks[1])
    receiver = {"name": "s", "slack_configs": [{**slack["slack_configs"][0], "api_url": "http://x"}]}
    parsed = parse_alerting_config({"route": {"receiver": "s"}, "receivers": [receiver]})
    assert set(parsed.receivers["s"].integrations[0].templates) >= {"title", "text", "channel"}


def test_server_settings_name_the_alertmanager_file_relative_to_the_config_and_reload_rereads_it(
        tmp_path: Path) -> None:
    from stackwatch.alerting.dispatcher import open_dispatcher
    from stackwatch.config import load_settings

    (tmp_path / "conf").mkdir()
    am = tmp_path / "conf" / "alertmanager.yml"
    am.write_text("route: {receiver: first}\nreceivers: [{name: first}]\n")
    (tmp_path / "conf" / "stackwatch.yml").write_text("alerting: alertmanager.yml\n")
    settings = load_settings(tmp_path / "conf" / "stackwatch.yml", env={})
    d = open_dispatcher(settings, None, start=False)
    assert d.routes_for({"a": "b"}) == ["first"]
    am.write_text("route: {receiver: second}\nreceivers: [{name: second}]\n")
    d.reload()
    assert d.routes_for({"a": "b"}) == ["second"]
    am.write_text("route: {receiver: nope}\nreceivers: [{name: second}]\n")
    with pytest.raises(ConfigError, match="undefined receiver 'nope'"):
        d.reload()
    assert d.routes_for({"a": "b"}) == ["second"]  # the running configuration stays


def test_telegram_discord_pushover_and_opsgenie_receivers_go_through_apprise() -> None:
    import apprise

    cfg = parse_alerting_config(yaml.safe_load("""
route: {receiver: chat}
receivers:
  - name: chat
    telegram_configs: [{bot_token: "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", chat_id: -1001234567890,
                        message: '{{ .CommonLabels.alertname }} is {{ .Status }}'}]
    discord_configs: [{webhook_url: "https://discord.com/api/webhooks/1234567890/abcdefTOKEN", title: "t"}]
    pushover_configs: [{user_key: uQiRzpo4DXghDmr9QzzfQu27cmVRsG, token: azGDORePK8gMaC0QOYAMyEEuzJnyUi}]
    opsgenie_configs: [{api_key: 0123456789abcdef0123456789abcdef, send_resolved: false}]
"""))
    integrations = cfg.receivers["chat"].integrations
    assert [i.name for i in integrations] == ["telegram[0]", "discord[0]", "pushover[0]", "opsgenie[0]"]
    assert {i.kind for i in integrations} == {"apprise"}
    urls = [i.params["urls"][0] for i in integrations]
    assert urls[0] == "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/-1001234567890"
    assert urls[1] == "discord://1234567890/abcdefTOKEN"
    assert all(apprise.Apprise().add(u) for u in urls)  # apprise understands every one
    assert integrations[0].templates["body"].render({"CommonLabels": {"alertname": "X"}, "Status": "firing"}) == (
        "X is firing")
    assert not integrations[3].send_resolved


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True),
                       st.text(max_size=20), min_size=1, max_size=4))
def test_a_silence_link_filter_reads_back_as_the_same_labels(labels: dict[str, str]) -> None:
    """A notification's "Silence" link: values with backslashes, quotes or newlines (a Windows
    mount point, an error title) came back altered, and the silence matched nothing."""
    from stackwatch.alerting.matchers import equality_filter

    matchers = parse_matchers(equality_filter(labels))
    assert {m.name: m.value for m in matchers} == labels and all(m.op == "=" for m in matchers)

"""The Go-template subset of alert labels and annotations, printed as Prometheus prints."""

from __future__ import annotations

import pytest

from stackwatch.rules.template import Sample, TemplateError, check_template, expand

LABELS = {"instance": "db1.example.com:9100", "job": "node", "mountpoint": "/"}


def run(text: str, value: float = 0.0, **kw: object) -> str:
    return expand(text, labels=LABELS, value=value, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text,value,out",
    [
        ("{{ $labels.instance }} down", 0.0, "db1.example.com:9100 down"),
        ("{{ .Labels.job }}/{{ .Value }}", 2.5, "node/2.5"),
        ("{{ $value }}", 1234567.0, "1.234567e+06"),
        ("{{ $value }}", 123456.0, "123456"),
        ("{{ $value }}", 0.00001, "1e-05"),
        ("{{ $value }}", 0.1 + 0.2, "0.30000000000000004"),
        ("{{ $value }}", float("nan"), "NaN"),
        ("{{ $value }}", float("inf"), "+Inf"),
        ("{{ $value | humanize }}", 1234567.0, "1.235M"),
        ("{{ $value | humanize }}", 0.0012, "1.2m"),
        ("{{ $value | humanize }}", 0.0, "0"),
        ("{{ $value | humanize1024 }}", 1048576.0, "1Mi"),
        ("{{ humanizePercentage $value }}", 0.8512, "85.12%"),
        ("{{ humanizeDuration $value }}", 93784.0, "1d 2h 3m 4s"),
        ("{{ humanizeDuration $value }}", 2.5, "2.5s"),
        ("{{ humanizeDuration $value }}", 0.25, "250ms"),
        ("{{ humanizeTimestamp $value }}", 1435065584.128, "2015-06-23 13:19:44.128 +0000 UTC"),
        ('{{ printf "%.2f" $value }}%', 97.456, "97.46%"),
        ('{{ printf "%s is %d%%" $labels.job 5 }}', 0.0, "node is 5%"),
        ('{{ printf "%v" $value }}', 3.0, "3"),
        ("{{ if gt $value 80.0 }}high{{ else if gt $value 50.0 }}mid{{ else }}low{{ end }}", 60.0, "mid"),
        ("{{ with $labels.mountpoint }}on {{ . }}{{ end }}", 0.0, "on /"),
        ("{{ with $labels.nothing }}on {{ . }}{{ else }}none{{ end }}", 0.0, "none"),
        ("{{ $labels.missing }}|", 0.0, "|"),
        ("{{ $labels.instance | stripPort | stripDomain | toUpper }}", 0.0, "DB1"),
        ('{{ reReplaceAll "(.+):.*" "$1" $labels.instance }}', 0.0, "db1.example.com"),
        ('{{ if match "^db" $labels.instance }}database{{ end }}', 0.0, "database"),
        ("{{ title \"disk full\" }}", 0.0, "Disk Full"),
        ("a  {{- $labels.job -}}  b", 0.0, "anodeb"),
        ("{{/* a comment */}}x", 0.0, "x"),
        ("{{ $x := 5 }}{{ $x }}", 0.0, "5"),
        ("{{ range $k, $v := $labels }}{{ $k }};{{ end }}", 0.0, "instance;job;mountpoint;"),
        ("{{ $externalLabels.cluster }} {{ $externalURL }}", 0.0, "eu-1 http://sw.example.com"),
        ("{{ index $labels \"job\" }}", 0.0, "node"),
        ("{{ len $labels }}", 0.0, "3"),
        ("{{ if and (gt $value 1.0) (lt $value 10.0) }}in{{ end }}", 5.0, "in"),
        ("no template", 0.0, "no template"),
    ],
)
def test_expansion(text: str, value: float, out: str) -> None:
    assert run(text, value, external_labels={"cluster": "eu-1"}, external_url="http://sw.example.com") == out


def test_query_in_a_template() -> None:
    asked: list[str] = []

    def query(expr: str) -> list[Sample]:
        asked.append(expr)
        return [Sample({"instance": "b"}, 0.0), Sample({"instance": "a"}, 1.0)]

    text = "{{ with query \"up{job='node'}\" }}{{ . | first | value }} {{ range sortByLabel \"instance\" . }}" \
           "{{ .Labels.instance }}{{ end }}{{ end }}"
    assert run(text, query=query) == "0 ab"
    assert run('{{ with query "x" }}{{ . | first | label "instance" }}{{ end }}', query=query) == "b"
    assert asked == ["up{job='node'}", "x"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("{{ nosuch }}", 'function "nosuch" not defined'),
        ("{{ $undefined }}", 'undefined variable "$undefined"'),
        ('{{ query "up" }}', "query is not available here"),
        ("{{ humanize \"abc\" }}", 'strconv.ParseFloat: parsing "abc": invalid syntax'),
        ("{{ if }}", "missing value for command"),
        ("{{ if true }}x", "missing {{end}} for if"),
        ("{{ 1 2 }}", "can't give argument to non-function 1"),
        ("{{ $labels.job.x }}", "can't evaluate field x in type string"),
    ],
)
def test_errors_become_text_never_exceptions(text: str, message: str) -> None:
    out = run(text)
    assert out.startswith("<error expanding template: ") and message in out


def test_check_template_finds_parse_errors_and_unknown_functions() -> None:
    check_template("{{ $labels.x | humanize }}")
    for bad in ("{{ if true }}", "{{ nosuch 1 }}", "{{ end }}", "{{ (1 }}"):
        with pytest.raises(TemplateError):
            check_template(bad)

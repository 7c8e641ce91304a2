"""Relabeling semantics, case by case, and the configuration errors users see."""

from __future__ import annotations

import re

import pytest

from stackwatch.collectors.relabel import compile_rules, expand, relabel
from stackwatch.errors import ConfigError

BASE = {"__address__": "10.0.0.1:9100", "env": "prod", "team": "core", "__meta_port": "9100", "job": "node"}

CASES: list[tuple[str, list[dict[str, object]], dict[str, str] | None]] = [
    ("replace with defaults copies the source", [{"source_labels": ["env"], "target_label": "stage"}],
     {**BASE, "stage": "prod"}),
    ("replace with a regex and group",
     [{"source_labels": ["__address__"], "regex": "(.*):\\d+", "target_label": "host", "replacement": "$1"}],
     {**BASE, "host": "10.0.0.1"}),
    ("joined sources with separator",
     [{"source_labels": ["env", "team"], "separator": "/", "target_label": "path"}], {**BASE, "path": "prod/core"}),
    ("regex must match the whole value",
     [{"source_labels": ["env"], "regex": "pro", "target_label": "x", "replacement": "y"}], BASE),
    ("empty replacement removes the label",
     [{"source_labels": ["env"], "regex": ".*", "target_label": "team", "replacement": ""}],
     {k: v for k, v in BASE.items() if k != "team"}),
    ("target label with a group reference",
     [{"source_labels": ["env"], "regex": "(.*)", "target_label": "is_$1", "replacement": "yes"}],
     {**BASE, "is_prod": "yes"}),
    ("${1}x is a group followed by letters, $1x names a missing group",
     [{"source_labels": ["env"], "regex": "(.*)", "target_label": "a", "replacement": "${1}x"},
      {"source_labels": ["env"], "regex": "(.*)", "target_label": "b", "replacement": "$1x-"}],
     {**BASE, "a": "prodx", "b": "-"}),
    ("named groups", [{"source_labels": ["__address__"], "regex": "(?P<ip>[^:]+):(?P<port>.*)",
                       "target_label": "port", "replacement": "${port}"}], {**BASE, "port": "9100"}),
    ("keep matching", [{"source_labels": ["env"], "regex": "prod|staging", "action": "keep"}], BASE),
    ("keep not matching drops", [{"source_labels": ["env"], "regex": "staging", "action": "keep"}], None),
    ("drop matching", [{"source_labels": ["team"], "regex": "core", "action": "drop"}], None),
    ("missing source label is the empty string",
     [{"source_labels": ["absent"], "regex": "", "action": "drop"}], None),
    ("keepequal", [{"source_labels": ["__meta_port"], "target_label": "port_copy", "action": "keepequal"}], None),
    ("dropequal keeps when different",
     [{"source_labels": ["env"], "target_label": "team", "action": "dropequal"}], BASE),
    ("hashmod shards like Prometheus",
     [{"source_labels": ["__address__"], "modulus": 4, "target_label": "__tmp_hash", "action": "hashmod"}],
     {**BASE, "__tmp_hash": "1"}),
    ("labelmap copies matching names",
     [{"regex": "__meta_(.+)", "action": "labelmap"}], {**BASE, "port": "9100"}),
    ("labeldrop", [{"regex": "team|env", "action": "labeldrop"}],
     {k: v for k, v in BASE.items() if k not in ("team", "env")}),
    ("labelkeep", [{"regex": "__.*|job", "action": "labelkeep"}],
     {"__address__": "10.0.0.1:9100", "__meta_port": "9100", "job": "node"}),
    ("lowercase and uppercase",
     [{"source_labels": ["team"], "target_label": "TEAM_UP", "action": "uppercase"},
      {"source_labels": ["TEAM_UP"], "target_label": "team_low", "action": "lowercase"}],
     {**BASE, "TEAM_UP": "CORE", "team_low": "core"}),
    ("rules apply in order", [{"source_labels": ["env"], "target_label": "env", "replacement": "production",
                               "regex": "prod"}, {"source_labels": ["env"], "regex": "prod", "action": "drop"}],
     {**BASE, "env": "production"}),
]


@pytest.mark.parametrize(("name", "rules", "expected"), CASES, ids=[c[0] for c in CASES])
def test_relabel(name: str, rules: list[dict[str, object]], expected: dict[str, str] | None) -> None:
    assert relabel(BASE, compile_rules(rules, "t")) == expected


def test_relabel_does_not_change_its_input() -> None:
    labels = dict(BASE)
    relabel(labels, compile_rules([{"regex": ".*", "action": "labeldrop"}], "t"))
    assert labels == BASE


def test_expand_dollar_forms() -> None:
    m = re.fullmatch(r"(a)(?P<n>b)", "ab")
    assert m is not None
    assert expand("$1-${2}-${n}-$$-$9", m) == "a-b-b-$-"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"action": "explode"}], "unknown action 'explode'"),
        ([{"source_labels": ["a"], "regex": "("}], "t[0].regex"),
        ([{"source_labels": ["a"], "action": "hashmod", "target_label": "x"}], "positive integer modulus"),
        ([{"source_labels": ["a"], "action": "replace"}], "needs target_label"),
        ([{"source_labels": ["a"], "regex": "x", "action": "labeldrop"}], "takes only regex"),
        ([{"sources": ["a"]}], "unknown key(s) sources"),
        ("nope", "must be a list"),
    ],
)
def test_bad_rules_name_the_problem(rules: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_rules(rules, "t")
    assert message in info.value.message

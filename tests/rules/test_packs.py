"""The rule packs under packs/ (node, PostgreSQL, Redis, nginx, blackbox) load, check and pass their
unit tests through the ``stackwatch rules`` commands, and the commands report failures clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stackwatch.cli import app
from stackwatch.rules import parse_rule_file

PACKS = Path(__file__).parent / "packs"
RULE_FILES = sorted(PACKS.glob("*.rules.yml"))
TEST_FILES = sorted(PACKS.glob("*.test.yml"))
runner = CliRunner()


def test_there_is_a_pack_per_exporter() -> None:
    assert [p.name.split(".")[0] for p in RULE_FILES] == ["blackbox", "nginx", "node", "postgres", "redis"]
    assert [p.name.split(".")[0] for p in TEST_FILES] == ["blackbox", "nginx", "node", "postgres", "redis"]


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_pack_loads_with_for_labels_and_templated_annotations(path: Path) -> None:
    groups = parse_rule_file(path)
    alerts = [r for g in groups for r in g.rules if r.kind == "alert"]
    assert len(alerts) >= 4
    assert all(r.labels.get("severity") for r in alerts)
    assert any(r.for_ms for r in alerts)
    assert all("{{" in " ".join(r.annotations.values()) for r in alerts)


def test_rules_check_accepts_the_packs() -> None:
    result = runner.invoke(app, ["rules", "check", *map(str, RULE_FILES)])
    assert result.exit_code == 0, result.output
    assert result.output.count("SUCCESS") == len(RULE_FILES)
    assert "SUCCESS: 7 rules found" in result.output  # node


def test_rules_test_passes_on_the_packs() -> None:
    result = runner.invoke(app, ["rules", "test", *map(str, TEST_FILES)])
    assert result.exit_code == 0, result.output
    assert result.output.count("SUCCESS") == len(TEST_FILES)


def test_rules_check_fails_with_located_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: g\n    rules:\n      - alert: X\n        expr: rate(x[5m]\n")
    result = runner.invoke(app, ["rules", "check", str(PACKS / "node.rules.yml"), str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:5: group \"g\", rule 1, \"X\": could not parse expression" in result.output
    assert "SUCCESS: 7 rules found" in result.output  # the good file is still reported


def test_rules_test_fails_and_says_what_differed(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text((PACKS / "redis.rules.yml").read_text())
    (tmp_path / "t.yml").write_text("""
rule_files: [rules.yml]
tests:
  - input_series:
      - series: 'redis_up{instance="c1"}'
        values: '0 0'
    alert_rule_test:
      - eval_time: 1m
        alertname: RedisDown
        exp_alerts:
          - exp_labels: {severity: warning, instance: c1}
""")
    result = runner.invoke(app, ["rules", "test", str(tmp_path / "t.yml")])
    assert result.exit_code == 1
    assert "alertname: RedisDown, time: 1m" in result.output
    assert 'labels: {alertname="RedisDown", instance="c1", severity="warning"}' in result.output
    assert 'labels: {alertname="RedisDown", instance="c1", severity="critical"}' in result.output


def test_rules_test_reports_missing_rule_files_and_bad_series(tmp_path: Path) -> None:
    (tmp_path / "t.yml").write_text("rule_files: [nope.yml]\ntests: []\n")
    result = runner.invoke(app, ["rules", "test", str(tmp_path / "t.yml")])
    assert result.exit_code == 1 and "rule file 'nope.yml': no such file" in result.output
    (tmp_path / "r.yml").write_text("groups: []")
    (tmp_path / "t2.yml").write_text(
        "rule_files: [r.yml]\ntests:\n  - input_series: [{series: 'x{', values: '1'}]\n")
    result = runner.invoke(app, ["rules", "test", str(tmp_path / "t2.yml")])
    assert result.exit_code == 1 and "invalid series" in result.output


def test_expanding_notation() -> None:
    from stackwatch.query.promql import is_stale_nan
    from stackwatch.rules.unit import expand_values

    vals = expand_values("1+2x3 _ 5x2 _x2 stale -1-1x1 0x0")
    assert vals[:4] == [1, 3, 5, 7] and vals[4] is None and vals[5:8] == [5, 5, 5]
    assert vals[8:10] == [None, None] and is_stale_nan(__import__("numpy").array([vals[10]]))[0]
    assert vals[11:] == [-1, -2, 0]

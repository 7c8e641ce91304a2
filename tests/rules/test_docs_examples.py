"""The examples of docs/alerting-rules.md load, and its unit-test example passes."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stackwatch.rules import parse_groups, run_test_file
from stackwatch.rules.loader import parse_group_mapping

DOC = Path(__file__).resolve().parents[2] / "docs" / "alerting-rules.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)


def test_every_rule_example_loads() -> None:
    checked = 0
    for block in BLOCKS:
        doc = yaml.safe_load(block)
        if isinstance(doc, dict) and "groups" in doc:
            assert parse_groups(block, "doc"), block
        elif isinstance(doc, list) and doc and ("alert" in doc[0] or "record" in doc[0]):
            parse_group_mapping({"name": "doc", "rules": doc}, "doc")
        elif isinstance(doc, dict) and "rule_files" in doc and "tests" in doc:
            continue
        elif isinstance(doc, dict) and "rule_files" in doc:
            continue  # the server configuration
        else:
            raise AssertionError(f"unexpected example:\n{block}")
        checked += 1
    assert checked >= 8


def test_the_curl_example_body_is_a_valid_group() -> None:
    body = re.search(r"<<'EOF'\n(.*?)EOF", DOC.read_text(), re.S)
    assert body is not None
    group = parse_group_mapping(yaml.safe_load(body.group(1)), "db")
    assert group.name == "checkout" and group.rules[0].for_ms == 300_000


def test_the_unit_test_example_passes(tmp_path: Path) -> None:
    files = {b.split("\n", 1)[0][2:]: b for b in BLOCKS if b.startswith("# api")}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = run_test_file(tmp_path / "api.test.yml")
    assert result.ok, result.failures

"""The rule settings: rule_files (YAML list or comma-separated), evaluation_interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackwatch.config import load_settings
from stackwatch.errors import ConfigError


def test_rule_files_from_yaml_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "stackwatch.yml"
    cfg.parent.mkdir()
    cfg.write_text("rule_files: [rules/*.yml, /etc/packs/*.yml]\nevaluation_interval: 30s\n")
    s = load_settings(cfg, env={})
    assert s.rule_files.split(",") == [str(cfg.parent.resolve() / "rules/*.yml"), "/etc/packs/*.yml"]
    assert s.evaluation_interval == "30s"


def test_rule_settings_from_the_environment() -> None:
    s = load_settings(None, env={"STACKWATCH_RULE_FILES": "a/*.yml,b.yml", "STACKWATCH_EVALUATION_INTERVAL": "15s"})
    assert (s.rule_files, s.evaluation_interval) == ("a/*.yml,b.yml", "15s")
    assert load_settings(None, env={}).evaluation_interval == "1m"


@pytest.mark.parametrize("bad", ["soon", "0", "5 m"])
def test_a_bad_evaluation_interval_stops_start_up(bad: str) -> None:
    with pytest.raises(ConfigError, match="evaluation_interval"):
        load_settings(None, env={"STACKWATCH_EVALUATION_INTERVAL": bad})

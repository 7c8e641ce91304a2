"""Settings: precedence, coercion, clear errors, and docs that match the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackwatch.config import load_settings, settings_markdown
from stackwatch.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_precedence_defaults_yaml_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "sw.yaml"
    cfg.write_text("port: 9000\nhost: 0.0.0.0\nwal_fsync: false\n")
    s = load_settings(cfg, env={})
    assert (s.port, s.host, s.wal_fsync, s.batch_max_rows) == (9000, "0.0.0.0", False, 200_000)
    s = load_settings(cfg, env={"STACKWATCH_PORT": "9100"})
    assert s.port == 9100
    s = load_settings(cfg, env={"STACKWATCH_PORT": "9100"}, port=9200)
    assert s.port == 9200


def test_bad_values_name_the_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'port': bad value 'eighty'"):
        load_settings(env={"STACKWATCH_PORT": "eighty"})
    with pytest.raises(ConfigError, match=r"'wal_fsync': bad value 'maybe'"):
        load_settings(env={"STACKWATCH_WAL_FSYNC": "maybe"})
    cfg = tmp_path / "sw.yaml"
    cfg.write_text("prot: 80\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_settings(cfg, env={})
    cfg.write_text("port: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(tmp_path / "missing.yaml", env={})


def test_sections_are_passed_through(tmp_path: Path) -> None:
    cfg = tmp_path / "sw.yaml"
    cfg.write_text("pipeline:\n  redact:\n    allow: [a@b.c]\n")
    assert load_settings(cfg, env={}).extra["pipeline"] == {"redact": {"allow": ["a@b.c"]}}


def test_configuration_docs_list_every_setting() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert settings_markdown().strip() in doc, "run scripts/gen-config-docs.py"

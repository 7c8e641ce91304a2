"""Regenerate docs/configuration.md from the settings table in stackwatch.config."""

from pathlib import Path

from stackwatch.config import settings_markdown

root = Path(__file__).resolve().parent.parent
template = (root / "docs" / "configuration.md.in").read_text()
(root / "docs" / "configuration.md").write_text(template.replace("@SETTINGS@", settings_markdown().rstrip()))

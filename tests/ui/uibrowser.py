"""Debian's chromium driven by Playwright, for the UI tests (skipped where either is missing
outside CI; tests/conftest.py turns such a skip into a failure under CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def require_browser() -> Any:
    """Playwright's ``sync_playwright``, or a skip that says what to install."""
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} not installed (apt-get install -y chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright not installed (pip install -e '.[dev]')"
    if missing:
        pytest.skip(missing)
    return sync_playwright

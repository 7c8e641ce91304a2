"""Fixtures of the meta-store tests."""

from __future__ import annotations

import pytest
from fake_clocks import Clocks


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()

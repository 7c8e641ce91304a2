from __future__ import annotations

from collections.abc import Iterator

import pytest
from alerting_receivers import ManualClock, Recorder


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()

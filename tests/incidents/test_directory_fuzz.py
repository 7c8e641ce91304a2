"""Whatever JSON arrives as a schedule, policy, override or profile: a clear 4xx or success."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Clock
from stackwatch.errors import BadRequest, NotFound
from stackwatch.incidents.directory import Conflict, Directory
from stackwatch.storage.meta import MetaStore

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(["name", "participants", "rotation", "shift_length", "handoff_time", "handoff_day", "start",
                        "targets", "delay_minutes", "schedule", "layer", "user", "receiver", "levels", "repeat",
                        "timezone", "layers", "end", "receivers"])
SHAPED = st.recursive(JSON, lambda inner: st.dictionaries(KEYS, inner, max_size=6) | st.lists(inner, max_size=3),
                      max_leaves=20)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directory]:
    store = MetaStore(f"sqlite:///{Path(tmp_path_factory.mktemp('fuzz')) / 'meta.db'}")
    store.migrate()
    d = Directory(store, Clock())
    d.create_schedule({"name": "ops", "layers": [{"participants": ["a"]}]})
    yield d
    store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=SHAPED, which=st.sampled_from(["schedule", "policy", "override", "profile"]))
def test_any_input_is_accepted_or_refused_clearly(directory: Directory, spec: Any, which: str) -> None:
    if not isinstance(spec, dict):
        spec = {"layers": spec, "levels": spec}
    try:
        if which == "schedule":
            directory.create_schedule({"name": "s", **spec})
            directory.delete_schedule("s")
        elif which == "policy":
            directory.create_policy({"name": "p", **spec})
            directory.delete_policy("p")
        elif which == "override":
            directory.add_override("ops", spec)
        else:
            directory.put_profile("someone", spec)
    except (BadRequest, Conflict, NotFound) as exc:
        assert exc.message

"""The JSON and YAML examples of docs/incidents.md are accepted as documented."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import yaml

from stackwatch.incidents.service import IncidentConfig, IncidentService

DOC = (Path(__file__).resolve().parents[2] / "docs" / "incidents.md").read_text()


def test_documented_config_block_is_the_defaults() -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", DOC, flags=re.S)
    config = IncidentConfig.from_dict(yaml.safe_load(block)["incidents"])
    assert config == IncidentConfig()


def test_documented_schedule_profile_and_policy_are_accepted(service: IncidentService) -> None:
    schedule, profile, policy = (json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOC, flags=re.S))
    d = service.directory
    d.create_schedule(schedule)
    d.put_profile("ann@example.com", profile)
    d.put_profile("cto@example.com", profile)  # the policy pages the CTO: a profile must exist
    created = d.create_policy(policy)
    assert created["default"] and len(created["levels"]) == 3
    d.add_override("ops", {"layer": "primary", "user": "dan@example.com", "start": "2025-12-24T00:00:00Z",
                           "end": "2025-12-27T00:00:00Z"})
    who = d.who(datetime(2025, 12, 25, 3, tzinfo=UTC), "ops")
    assert [(w["layer"], w["user"], w["source"]) for w in who] == [
        ("primary", "dan@example.com", "override"), ("secondary", "cat@example.com", "rotation")]  # week 6: even

"""The rule manager: scheduling by an injected clock, reloads, and alert state across restarts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from stackwatch.model.alerts import Alert
from stackwatch.query.promql import MemoryStorage
from stackwatch.rules import MemorySources, RuleManager
from stackwatch.storage.meta import MetaStore
from stackwatch.storage.meta.models import RuleGroupRecord

MIN = 60_000
T0 = 1_700_000_000_000 // MIN * MIN  # a round minute

RULES = """
groups:
  - name: availability
    rules:
      - alert: Down
        expr: up == 0
        for: 2m
        labels: {severity: page}
      - alert: SlowBurn
        expr: up == 0
        for: 15m
  - name: fast
    interval: 30s
    rules:
      - record: up:sum
        expr: sum(up)
"""


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.ms / 1000, UTC)


def _manager(tmp_path: Path, storage: MemoryStorage, meta: MetaStore | None, sent: list[Alert],
             clock: Clock) -> RuleManager:
    (tmp_path / "rules.yml").write_text(RULES) if not (tmp_path / "rules.yml").exists() else None
    m = RuleManager(MemorySources(storage), notify=sent.extend, clock=clock, rule_files=["*.yml"],
                    base_dir=tmp_path, meta=meta)
    assert m.reload() == []
    return m


def _down_from(storage: MemoryStorage, start: int, minutes: int) -> None:
    for i in range(minutes):
        storage.add({"__name__": "up", "instance": "a"}, start + i * MIN, 0)


def test_groups_run_at_their_own_interval_by_the_injected_clock(tmp_path: Path) -> None:
    storage = MemoryStorage()
    clock = Clock(T0)
    m = _manager(tmp_path, storage, None, [], clock)
    assert m.tick() == 2  # both groups run at the first tick
    evals = {gs.group.name: [] for gs in m.snapshot()}
    for step in range(1, 9):  # 4 minutes in 30 s steps
        clock.ms = T0 + step * 30_000
        m.tick()
        for gs in m.snapshot():
            if gs.last_eval_ms == clock.ms:
                evals[gs.group.name].append(step)
    assert evals == {"availability": [2, 4, 6, 8], "fast": [1, 2, 3, 4, 5, 6, 7, 8]}


def test_a_tick_after_a_pause_skips_missed_evaluations(tmp_path: Path) -> None:
    m = _manager(tmp_path, MemoryStorage(), None, [], Clock(T0))
    m.tick(T0)
    m.tick(T0 + 10 * MIN + 5_000)
    [gs] = [g for g in m.snapshot() if g.group.name == "availability"]
    assert gs.last_eval_ms == T0 + 10 * MIN and gs.next_eval_ms == T0 + 11 * MIN


def test_a_restart_keeps_a_firing_alert_and_does_not_page_it_as_new(tmp_path: Path, meta_store: MetaStore) -> None:
    storage = MemoryStorage()
    _down_from(storage, T0, 30)
    sent: list[Alert] = []
    m = _manager(tmp_path, storage, meta_store, sent, Clock(T0))
    for i in range(4):
        m.tick(T0 + i * MIN)
    first = [a for a in sent if a.labels["alertname"] == "Down"]
    assert first and first[0].starts_at == datetime.fromtimestamp((T0 + 2 * MIN) / 1000, UTC)

    # The server stops; a new one starts one minute later over the same meta store.
    sent2: list[Alert] = []
    m2 = _manager(tmp_path, storage, meta_store, sent2, Clock(T0 + 5 * MIN))
    down = next(rs for gs in m2.snapshot() for rs in gs.rules if rs.rule.name == "Down")
    assert [a.state for a in down.active.values()] == ["firing"]  # known before any evaluation
    m2.tick(T0 + 5 * MIN)
    [again] = [a for a in sent2 if a.labels["alertname"] == "Down"]
    assert again.starts_at == first[0].starts_at  # the same alert, not a new page
    assert again.labels == first[0].labels


def test_a_restart_resumes_pending_alerts_with_the_for_grace_period(tmp_path: Path, meta_store: MetaStore) -> None:
    storage = MemoryStorage()
    _down_from(storage, T0, 60)
    m = _manager(tmp_path, storage, meta_store, [], Clock(T0))
    for i in range(6):  # SlowBurn (for 15m) pending since T0; last evaluation at T0+5m
        m.tick(T0 + i * MIN)
    m2 = _manager(tmp_path, storage, meta_store, [], Clock(T0 + 7 * MIN))
    m2.tick(T0 + 7 * MIN)
    slow = next(rs for gs in m2.snapshot() for rs in gs.rules if rs.rule.name == "SlowBurn")
    [a] = slow.active.values()
    # 10 of the 15 minutes remained when the server went down: the 2 minutes of downtime do not count.
    assert (a.state, a.active_at) == ("pending", T0 + 2 * MIN)
    for i in range(8, 17):
        m2.tick(T0 + i * MIN)
    assert a.state == "pending"
    m2.tick(T0 + 17 * MIN)
    assert a.state == "firing"


def test_close_to_firing_when_the_server_went_down_waits_the_grace_period(tmp_path: Path,
                                                                          meta_store: MetaStore) -> None:
    storage = MemoryStorage()
    _down_from(storage, T0, 60)
    m = _manager(tmp_path, storage, meta_store, [], Clock(T0))
    for i in range(13):  # pending for 12 of its 15 minutes
        m.tick(T0 + i * MIN)
    m2 = _manager(tmp_path, storage, meta_store, [], Clock(T0 + 14 * MIN))
    m2.tick(T0 + 14 * MIN)
    slow = next(rs for gs in m2.snapshot() for rs in gs.rules if rs.rule.name == "SlowBurn")
    [a] = slow.active.values()
    assert a.active_at == T0 + 14 * MIN + 10 * MIN - 15 * MIN  # fires 10 minutes (the grace) after restart


def test_reload_keeps_alerts_of_unchanged_rules_and_old_groups_of_a_broken_file(tmp_path: Path) -> None:
    storage = MemoryStorage()
    _down_from(storage, T0, 10)
    m = _manager(tmp_path, storage, None, [], Clock(T0))
    for i in range(3):
        m.tick(T0 + i * MIN)
    assert len(m.active_alerts()) == 2
    assert m.reload() == []
    assert len(m.active_alerts()) == 2
    (tmp_path / "rules.yml").write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: sum(\n")
    errors = m.reload()
    assert errors and str(errors[0]).startswith(str(tmp_path / "rules.yml") + ":5:")
    assert {gs.group.name for gs in m.snapshot()} == {"availability", "fast"}
    assert len(m.active_alerts()) == 2


def test_database_groups_run_unless_a_file_group_has_their_name(tmp_path: Path, meta_store: MetaStore) -> None:
    with meta_store.session() as s:
        s.add(RuleGroupRecord(project="default", name="from-api", spec={
            "name": "from-api", "rules": [{"alert": "Api", "expr": "vector(1)"}]}))
        s.add(RuleGroupRecord(project="default", name="fast", spec={
            "name": "fast", "rules": [{"alert": "Shadowed", "expr": "vector(1)"}]}))
    sent: list[Alert] = []
    m = _manager(tmp_path, MemoryStorage(), meta_store, sent, Clock(T0))
    assert {gs.group.name: gs.group.origin for gs in m.snapshot()} == {
        "availability": "file", "fast": "file", "from-api": "db"}
    assert m.shadowed == ["default/fast"]
    m.tick(T0)
    assert [a.labels["alertname"] for a in sent] == ["Api"]


def test_groups_that_disappear_take_their_stored_state_with_them(tmp_path: Path, meta_store: MetaStore) -> None:
    from sqlalchemy import func, select

    from stackwatch.storage.meta.models import RuleAlertState

    storage = MemoryStorage()
    _down_from(storage, T0, 10)
    m = _manager(tmp_path, storage, meta_store, [], Clock(T0))
    for i in range(3):
        m.tick(T0 + i * MIN)
    with meta_store.session() as s:
        assert s.scalar(select(func.count()).select_from(RuleAlertState)) == 2
    (tmp_path / "rules.yml").write_text("groups: []")
    m.reload()
    with meta_store.session() as s:
        assert s.scalar(select(func.count()).select_from(RuleAlertState)) == 0


def test_the_background_thread_evaluates_and_stops(tmp_path: Path) -> None:
    import time

    storage = MemoryStorage()
    storage.add({"__name__": "up", "instance": "a"}, int(time.time() * 1000), 1)
    m = _manager(tmp_path, storage, None, [], Clock(0))
    m.clock = time.time
    m.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(gs.last_eval_ms for gs in m.snapshot()):
            time.sleep(0.05)
        assert all(gs.last_eval_ms for gs in m.snapshot())
        m.request_reload()
        time.sleep(0.2)
    finally:
        m.stop()
    assert m._thread is None

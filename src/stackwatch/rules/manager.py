"""The rule manager: loads groups (files and database), schedules them, keeps state across restarts.

Each group runs at its own interval on one background thread (rules are I/O-light and a group
must run its rules in order anyway). Time comes from an injectable clock, and :meth:`tick`
runs whatever is due at a given time, so tests drive hours of evaluation without sleeping.
Alert state is written to the meta store after every evaluation that changed it and read back
on start, so a restart neither forgets a firing alert nor announces it again as new.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from stackwatch.model.alerts import Alert

from .evaluator import FIRING, PENDING, ActiveAlert, GroupEvaluator, GroupState
from .loader import RuleError, RuleFileError, expand_globs, parse_group_mapping, parse_rule_file
from .model import RuleGroup
from .sources import Sources

__all__ = ["AlertStateStore", "Clock", "RuleManager"]

log = logging.getLogger("stackwatch.rules")

Clock = Callable[[], "datetime | float"]


def _now_ms(clock: Clock) -> int:
    now = clock()
    if isinstance(now, datetime):
        return int(now.timestamp() * 1000)
    return int(float(now) * 1000)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _ms(d: datetime | None) -> int | None:
    return None if d is None else round(d.timestamp() * 1000)


class AlertStateStore:
    """Alert state per group in the meta store (tables of migration 0003)."""

    def __init__(self, meta: Any) -> None:
        self.meta = meta
        #: What was last written per group: {(rule_index, ident): snapshot tuple}.
        self._saved: dict[str, dict[tuple[int, str], tuple[Any, ...]]] = {}
        #: When each group's last-evaluation time was last written.
        self._evals: dict[str, int] = {}

    def load(self, group_key: str) -> tuple[int | None, list[tuple[int, str, str, ActiveAlert]]]:
        from stackwatch.storage.meta.models import RuleAlertState, RuleGroupEval

        with self.meta.session() as s:
            ev = s.get(RuleGroupEval, group_key)
            rows = s.scalars(select(RuleAlertState).where(RuleAlertState.group_key == group_key)).all()
        out = []
        saved = {}
        for r in rows:
            a = ActiveAlert(dict(r.labels), dict(r.annotations), r.state, _ms(r.active_at) or 0,
                            float("nan") if r.value is None else r.value, _ms(r.fired_at), _ms(r.resolved_at),
                            _ms(r.last_sent_at), _ms(r.keep_firing_since),
                            dict(r.sent_labels) if r.sent_labels is not None else None, r.hold_ms)
            out.append((r.rule_index, r.rule_name, r.fingerprint, a))
            saved[(r.rule_index, r.fingerprint)] = self._snapshot(r.rule_name, a)
        self._saved[group_key] = saved
        return (_ms(ev.last_eval_at) if ev else None), out

    @staticmethod
    def _snapshot(name: str, a: ActiveAlert) -> tuple[Any, ...]:
        # Annotations and values are left out: they change with $value at every evaluation, and
        # the first evaluation after a restart recomputes them anyway. What must survive is the state.
        return (name, tuple(sorted(a.labels.items())), a.state, a.active_at,
                a.fired_at, a.resolved_at, a.last_sent_at, a.keep_firing_since,
                tuple(sorted(a.sent_labels.items())) if a.sent_labels is not None else None, a.hold_ms)

    def save(self, gs: GroupState) -> None:
        """Write what changed since the last save (values alone do not count as a change)."""
        from stackwatch.storage.meta.models import RuleAlertState, RuleGroupEval

        key = gs.group.key
        before = self._saved.get(key, {})
        now: dict[tuple[int, str], tuple[Any, ...]] = {}
        alerts: dict[tuple[int, str], tuple[str, ActiveAlert]] = {}
        for i, rs in enumerate(gs.rules):
            for ident, a in rs.active.items():
                now[(i, ident)] = self._snapshot(rs.rule.name, a)
                alerts[(i, ident)] = (rs.rule.name, a)
        changed = [k for k, snap in now.items() if before.get(k) != snap]
        gone = [k for k in before if k not in now]
        if not changed and not gone and gs.last_eval_ms is not None and self._evals.get(key, 0) + 60_000 > gs.last_eval_ms:
            self._saved[key] = now
            return  # nothing changed; the last-evaluation time is refreshed once a minute
        with self.meta.session() as s:
            ev = s.get(RuleGroupEval, key)
            if ev is None:
                s.add(RuleGroupEval(group_key=key, last_eval_at=_dt(gs.last_eval_ms)))
            else:
                ev.last_eval_at = _dt(gs.last_eval_ms)  # type: ignore[assignment]
            if changed or gone:
                wanted = [ident for _, ident in changed + gone]
                rows = {}
                for i in range(0, len(wanted), 500):  # bounded IN lists
                    rows.update({(r.rule_index, r.fingerprint): r for r in s.scalars(
                        select(RuleAlertState).where(RuleAlertState.group_key == key,
                                                     RuleAlertState.fingerprint.in_(wanted[i:i + 500])))})
                for k in gone:
                    if k in rows:
                        s.delete(rows[k])
                for idx, ident in changed:
                    name, a = alerts[(idx, ident)]
                    row = rows.get((idx, ident))
                    if row is None:
                        row = RuleAlertState(group_key=key, rule_index=idx, fingerprint=ident)
                        s.add(row)
                    row.rule_name = name
                    row.labels = dict(a.labels)
                    row.annotations = dict(a.annotations)
                    row.state = a.state
                    row.value = None if a.value != a.value else a.value
                    row.active_at = _dt(a.active_at)  # type: ignore[assignment]
                    row.fired_at = _dt(a.fired_at)
                    row.resolved_at = _dt(a.resolved_at)
                    row.last_sent_at = _dt(a.last_sent_at)
                    row.keep_firing_since = _dt(a.keep_firing_since)
                    row.sent_labels = dict(a.sent_labels) if a.sent_labels is not None else None
                    row.hold_ms = a.hold_ms
        self._evals[key] = gs.last_eval_ms or 0
        self._saved[key] = now

    def forget(self, group_key: str) -> None:
        from stackwatch.storage.meta.models import RuleAlertState, RuleGroupEval

        with self.meta.session() as s:
            s.execute(delete(RuleAlertState).where(RuleAlertState.group_key == group_key))
            s.execute(delete(RuleGroupEval).where(RuleGroupEval.group_key == group_key))
        self._saved.pop(group_key, None)


class RuleManager:
    """Loads, schedules and evaluates rule groups; the API reads its state."""

    def __init__(
        self,
        sources: Sources,
        *,
        notify: Callable[[list[Alert]], None] | None = None,
        clock: Clock = time.time,
        evaluation_interval_ms: int = 60_000,
        rule_files: Iterable[str] = (),
        base_dir: Path | None = None,
        meta: Any = None,
        **evaluator_options: Any,
    ) -> None:
        self.evaluator = GroupEvaluator(sources, notify=notify, **evaluator_options)
        self.clock = clock
        self.evaluation_interval_ms = evaluation_interval_ms
        self.rule_files = list(rule_files)
        self.base_dir = base_dir
        self.meta = meta
        self.state_store = AlertStateStore(meta) if meta is not None else None
        self.groups: dict[str, GroupState] = {}
        self.errors: list[RuleError] = []
        #: DB groups not evaluated because a file defines a group of the same project and name.
        self.shadowed: list[str] = []
        self.extra_groups: list[RuleGroup] = []
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reload_requested = False

    # -- loading ------------------------------------------------------------------------------

    def _db_groups(self) -> list[RuleGroup]:
        if self.meta is None:
            return []
        from stackwatch.storage.meta.models import RuleGroupRecord

        with self.meta.session() as s:
            rows = s.scalars(select(RuleGroupRecord).order_by(RuleGroupRecord.id)).all()
        out = []
        for r in rows:
            try:
                out.append(parse_group_mapping(r.spec, "db", default_project=r.project, origin="db"))
            except RuleFileError as exc:
                self.errors.extend(exc.errors)
        return out

    def reload(self) -> list[RuleError]:
        """Re-read rule files and database groups; unchanged groups keep their alerts.

        A file that does not load keeps nothing of the new version: its errors are returned (and
        shown by the API), and its groups from the previous load keep running, as Prometheus
        keeps its old rules when a reload fails.
        """
        with self._lock:
            self.errors = []
            files = expand_globs(self.rule_files, self.base_dir)
            loaded: list[RuleGroup] = []
            failed_files: set[str] = set()
            for f in files:
                try:
                    loaded.extend(parse_rule_file(f))
                except RuleFileError as exc:
                    self.errors.extend(exc.errors)
                    failed_files.add(str(f))
            for g in self.groups.values():  # keep a broken file's previous groups running
                if g.group.origin == "file" and g.group.file in failed_files:
                    loaded.append(g.group)
            file_names = {(g.project, g.name) for g in loaded}
            self.shadowed = []
            for g in [*self._db_groups(), *self.extra_groups]:
                if (g.project, g.name) in file_names:
                    self.shadowed.append(f"{g.project}/{g.name}")
                    continue
                loaded.append(g)
            self._install(loaded)
            return list(self.errors)

    def _install(self, groups: list[RuleGroup]) -> None:
        new: dict[str, GroupState] = {}
        for g in groups:
            if g.key in new:
                self.errors.append(RuleError(g.file, g.line, f'group "{g.name}" is defined twice'))
                continue
            gs = GroupEvaluator.prepare(g, self.evaluation_interval_ms)
            old = self.groups.get(g.key)
            if old is not None:
                # Same group: carry alerts over rule by rule (matched by position and name).
                for i, rs in enumerate(gs.rules):
                    if i < len(old.rules) and old.rules[i].rule.name == rs.rule.name:
                        prev = old.rules[i]
                        rs.active, rs.written, rs.nodata_since = prev.active, prev.written, prev.nodata_since
                        rs.health, rs.last_error = prev.health, prev.last_error
                        rs.last_eval_ms, rs.eval_seconds = prev.last_eval_ms, prev.eval_seconds
                gs.last_eval_ms, gs.eval_seconds = old.last_eval_ms, old.eval_seconds
                gs.next_eval_ms = old.next_eval_ms if old.interval_ms == gs.interval_ms else 0
            elif self.state_store is not None:
                self._restore(gs)
            new[g.key] = gs
        if self.state_store is not None:
            for key in set(self.groups) - set(new):
                self.state_store.forget(key)
        self.groups = new
        self._wake.set()

    def _restore(self, gs: GroupState) -> None:
        assert self.state_store is not None
        try:
            last_eval, rows = self.state_store.load(gs.group.key)
        except Exception as exc:  # an unreadable state must not stop the rules from running
            log.warning("group %r: could not restore alert state: %s", gs.group.name, exc)
            return
        for index, name, ident, alert in rows:
            target = None
            if index < len(gs.rules) and gs.rules[index].rule.name == name:
                target = gs.rules[index]
            else:
                same = [rs for rs in gs.rules if rs.rule.name == name]
                target = same[0] if len(same) == 1 else None
            if target is not None:
                target.active[ident] = alert
        gs.last_eval_ms = last_eval
        gs.restored_down_at_ms = last_eval

    # -- running ------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return _now_ms(self.clock)

    def tick(self, now_ms: int | None = None) -> int:
        """Evaluate every group due at ``now_ms`` (default: the clock); returns how many ran.

        Groups due at the same time share one prefetch of their selectors and one write of their
        results (see :class:`~stackwatch.rules.sources.StoreSources`).
        """
        now = self.now_ms() if now_ms is None else int(now_ms)
        ran = 0
        with self._lock:
            batches: dict[tuple[str, int], list[GroupState]] = {}
            for gs in self.groups.values():
                if gs.next_eval_ms > now:
                    continue
                if gs.next_eval_ms == 0:
                    ts = now
                else:
                    ts = gs.next_eval_ms + (now - gs.next_eval_ms) // gs.interval_ms * gs.interval_ms
                batches.setdefault((gs.group.project, ts), []).append(gs)
            sources = self.evaluator.sources
            for (project, ts), due in sorted(batches.items(), key=lambda kv: kv[0][1]):
                prepare = getattr(sources, "prepare", None)
                if prepare is not None and len(due) > 1:
                    nodes = [rs.node for gs in due for rs in gs.rules if rs.node is not None]
                    try:
                        prepare(project, nodes, ts - max(gs.group.query_offset_ms for gs in due),
                                self.evaluator.lookback_ms)
                    except Exception as exc:  # the groups fetch for themselves then
                        log.warning("rule prefetch failed: %s", exc)
                for gs in due:
                    self.evaluate_group(gs, ts, flush=False)
                    gs.next_eval_ms = ts + gs.interval_ms
                    ran += 1
                self.evaluator.flush()
        return ran

    def evaluate_group(self, gs: GroupState, ts_ms: int, *, flush: bool = True) -> list[Alert]:
        sent = self.evaluator.evaluate(gs, ts_ms, flush=flush)
        if self.state_store is not None:
            try:
                self.state_store.save(gs)
            except Exception as exc:
                log.warning("group %r: could not save alert state: %s", gs.group.name, exc)
        return sent

    def next_due_ms(self) -> int | None:
        with self._lock:
            return min((gs.next_eval_ms for gs in self.groups.values()), default=None)

    def start(self) -> None:
        """Run :meth:`tick` on a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="stackwatch-rules", daemon=True)
        self._thread.start()

    def request_reload(self) -> None:
        """Ask the background thread to reload (safe from a signal handler)."""
        self.reload_requested = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.reload_requested:
                self.reload_requested = False
                try:
                    errors = self.reload()
                    for e in errors:
                        log.error("rule reload: %s", e)
                except Exception as exc:
                    log.error("rule reload failed: %s", exc)
            try:
                self.tick()
            except Exception as exc:  # keep the scheduler alive whatever a group does
                log.exception("rule evaluation failed: %s", exc)
            nxt = self.next_due_ms()
            wait = 1.0 if nxt is None else max(0.01, min(5.0, (nxt - self.now_ms()) / 1000))
            self._wake.wait(wait)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # -- reading (the API) --------------------------------------------------------------------

    def snapshot(self) -> list[GroupState]:
        with self._lock:
            return sorted(self.groups.values(), key=lambda g: (g.group.project, g.group.file, g.group.name))

    def active_alerts(self, project: str | None = None) -> list[ActiveAlert]:
        out = []
        for gs in self.snapshot():
            if project is not None and gs.group.project != project:
                continue
            for rs in gs.rules:
                out.extend(a for a in rs.active.values() if a.state in (PENDING, FIRING))
        return out



"""Evaluating rule groups: Prometheus's alert state machine, recording rules, ``ALERTS`` series.

Per alerting rule and label set: the first evaluation that returns the series makes the alert
*pending* (``active_at``); once it has been returned for ``for`` it is *firing* (``fired_at``);
when it stops being returned it is *resolved* (``resolved_at``), unless ``keep_firing_for``
holds it a little longer. A pending alert that disappears is simply forgotten. Resolved
alerts are kept (and re-sent as resolved) for 15 minutes, as Prometheus does, so a receiver
that missed the first resolved notification still learns of it.

Every evaluation writes ``ALERTS{alertstate="pending"|"firing", ...}`` = 1 and
``ALERTS_FOR_STATE{...}`` = ``active_at`` (seconds) for each pending/firing alert, recording
rules write their result under their name, and series that disappear get a staleness marker.

Firing alerts are handed to ``notify`` every evaluation with ``ends_at = now + 4 x interval``;
resolved ones with ``ends_at = resolved_at`` (the Prometheus -> Alertmanager protocol).
"""

from __future__ import annotations

import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stackwatch.model.alerts import Alert, label_fingerprint
from stackwatch.query.promql import STALE_NAN, Engine, PromQLError
from stackwatch.query.promql._ast import Node
from stackwatch.query.promql._ast import parse as parse_promql

from .model import Rule, RuleGroup
from .sources import Sources
from .template import Sample, expand

__all__ = ["RESOLVED_RETENTION_MS", "ActiveAlert", "GroupEvaluator", "GroupState", "RuleState"]

log = logging.getLogger("stackwatch.rules")

RESOLVED_RETENTION_MS = 15 * 60_000
"""How long a resolved alert is kept and re-sent (Prometheus's ``resolvedRetention``)."""

PENDING, FIRING, INACTIVE = "pending", "firing", "inactive"


@dataclass
class ActiveAlert:
    """One alert of a rule, per label set; times are milliseconds since the epoch."""

    labels: dict[str, str]
    annotations: dict[str, str]
    state: str
    active_at: int
    value: float = math.nan
    fired_at: int | None = None
    resolved_at: int | None = None
    last_sent_at: int | None = None
    keep_firing_since: int | None = None
    #: The label set last handed to notify (differs from ``labels`` after a severity switch).
    sent_labels: dict[str, str] | None = None
    #: ``for`` of this alert when it is not the rule's (no-data alerts use the grace period).
    hold_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Prometheus's ``/api/v1/alerts`` element."""
        out: dict[str, Any] = {
            "labels": dict(sorted(self.labels.items())),
            "annotations": dict(sorted(self.annotations.items())),
            "state": self.state,
            "activeAt": _rfc3339(self.active_at),
            "value": _value_text(self.value),
        }
        if self.keep_firing_since is not None:
            out["keepFiringSince"] = _rfc3339(self.keep_firing_since)
        return out


def _rfc3339(ms: int | None) -> str:
    if ms is None:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _value_text(v: float) -> str:
    from .template import go_str

    # Prometheus prints the value with strconv 'e' formatting; Grafana parses any float text.
    return go_str(float(v)) if not math.isnan(v) else "NaN"


@dataclass
class RuleState:
    """A rule and what its evaluations have produced so far."""

    rule: Rule
    node: Node | None = None
    active: dict[str, ActiveAlert] = field(default_factory=dict)
    health: str = "unknown"
    last_error: str = ""
    last_eval_ms: int | None = None
    eval_seconds: float = 0.0
    #: Series written by the previous evaluation (labels as sorted tuples), for stale markers.
    written: set[tuple[tuple[str, str], ...]] = field(default_factory=set)
    nodata_since: int | None = None
    #: For ``<expr> <cmp> <number>`` alerts: (text of <expr>, names it reads, operator, number).
    split: tuple[str, frozenset[str], str, float] | None = None
    #: Metric names the expression reads, when all its selectors name one (then it is memoized).
    names: frozenset[str] | None = None

    @property
    def state(self) -> str:
        """The rule's state for the API: the most advanced of its alerts'."""
        states = {a.state for a in self.active.values()}
        return FIRING if FIRING in states else PENDING if PENDING in states else INACTIVE


@dataclass
class GroupState:
    group: RuleGroup
    rules: list[RuleState]
    interval_ms: int
    last_eval_ms: int | None = None
    eval_seconds: float = 0.0
    next_eval_ms: int = 0
    #: Restored from the state store and not yet reconciled by a first evaluation.
    restored_down_at_ms: int | None = None


def _sorted_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


class GroupEvaluator:
    """Evaluates groups against :class:`Sources`; one instance per manager (or per unit test)."""

    def __init__(
        self,
        sources: Sources,
        *,
        notify: Callable[[list[Alert]], None] | None = None,
        external_labels: dict[str, str] | None = None,
        external_url: str = "",
        lookback_ms: int = 300_000,
        max_samples: int = 50_000_000,
        timeout_s: float = 30.0,
        resend_delay_ms: int = 0,
        for_grace_period_ms: int = 600_000,
        outage_tolerance_ms: int = 3_600_000,
        write_series: bool = True,
    ) -> None:
        self.sources = sources
        self.notify = notify
        self.external_labels = external_labels or {}
        self.external_url = external_url.rstrip("/")
        self.lookback_ms = lookback_ms
        self.max_samples = max_samples
        self.timeout_s = timeout_s
        self.resend_delay_ms = resend_delay_ms
        self.for_grace_period_ms = for_grace_period_ms
        self.outage_tolerance_ms = outage_tolerance_ms
        self.write_series = write_series
        #: Left sides of threshold comparisons evaluated at a time: (project, t, text) -> (samples, names).
        self._lhs_memo: dict[tuple[str, int, str], tuple[list[tuple[dict[str, str], float]], frozenset[str]]] = {}

    @staticmethod
    def prepare(group: RuleGroup, default_interval_ms: int) -> GroupState:
        """The runtime state of a freshly loaded group (expressions parsed once, here)."""
        states = []
        for rule in group.rules:
            node = parse_promql(rule.expr) if rule.source == "promql" else None
            rs = RuleState(rule, node)
            if node is not None:
                rs.names = _names_read(node)
                if rule.kind == "alert" and rs.names is not None:
                    rs.split = _threshold_split(rule.expr, node)
            states.append(rs)
        return GroupState(group, states, group.interval_ms or default_interval_ms)

    # -- one group evaluation -------------------------------------------------------------------

    def evaluate(self, gs: GroupState, ts_ms: int, *, flush: bool = True) -> list[Alert]:
        """Evaluate every rule of the group at ``ts_ms``; returns (and notifies) the alerts sent.

        ``flush=False`` leaves written series buffered for the caller to flush once for several
        groups (a later reader of a buffered metric flushes it first, so nothing reads stale data).
        """
        started = time.perf_counter()
        group = gs.group
        query_ts = ts_ms - group.query_offset_ms
        if self._lhs_memo and next(iter(self._lhs_memo))[1] != query_ts:
            self._lhs_memo = {}
        nodes = [rs.node for rs in gs.rules if rs.node is not None]
        querier = self.sources.querier(group.project, nodes, query_ts, self.lookback_ms)
        engine = Engine(querier, lookback_delta_ms=self.lookback_ms, max_samples=self.max_samples,
                        timeout_s=self.timeout_s)
        to_send: list[Alert] = []
        for rs in gs.rules:
            t0 = time.perf_counter()
            try:
                if rs.rule.kind == "record":
                    self._record(rs, group, engine, query_ts, ts_ms)
                else:
                    self._alert(rs, gs, engine, query_ts, ts_ms)
                rs.health, rs.last_error = "ok", ""
            except Exception as exc:  # one broken rule must not stop the others
                rs.health, rs.last_error = "err", _error_text(exc)
                if not isinstance(exc, (PromQLError, ValueError, RuntimeError)):
                    log.warning("rule %r of group %r failed: %s", rs.rule.name, group.name, rs.last_error)
            if rs.rule.kind == "alert":
                to_send.extend(self._to_send(rs, gs, ts_ms))
            rs.last_eval_ms = ts_ms
            rs.eval_seconds = time.perf_counter() - t0
        gs.restored_down_at_ms = None
        if flush:
            self.flush()
        gs.last_eval_ms = ts_ms
        gs.eval_seconds = time.perf_counter() - started
        if to_send and self.notify is not None:
            try:
                self.notify(to_send)
            except Exception as exc:  # the dispatcher's failure is its own; keep evaluating
                log.warning("handing %d alerts to the dispatcher failed: %s", len(to_send), exc)
        return to_send

    def flush(self) -> None:
        """Write buffered recording results and ALERTS series; a failure is logged, not raised."""
        try:
            self.sources.flush()
        except Exception as exc:
            log.warning("writing rule results failed: %s", exc)

    def _values(self, rs: RuleState, group: RuleGroup, engine: Engine, query_ts: int) -> list[tuple[dict[str, str],
                                                                                                     float]]:
        rule = rs.rule
        if rule.source == "promql" and rs.split is not None:
            return self._split_values(rs.split, group, engine, query_ts)
        if rule.source == "promql":
            assert rs.node is not None
            if rs.names is None:
                return self._instant(engine, rule.expr, query_ts)
            return self._memo_instant(group, engine, query_ts, rule.expr, rs.names)
        if rule.source == "log":
            n = self.sources.log_count(group.project, rule.expr, query_ts - rule.window_ms, query_ts)
            return [({}, float(n))]
        return self._error_values(rule, group, query_ts)

    @staticmethod
    def _instant(engine: Engine, expr: str, query_ts: int) -> list[tuple[dict[str, str], float]]:
        res = engine.instant(expr, query_ts)
        if res.type == "scalar":
            return [({}, res.scalar)]
        return [(s.labels, float(s.values[0])) for s in res.series]

    def _memo_instant(self, group: RuleGroup, engine: Engine, query_ts: int, expr: str,
                      names: frozenset[str]) -> list[tuple[dict[str, str], float]]:
        """``expr`` at ``query_ts``, evaluated once for every rule of the project that has it."""
        key = (group.project, query_ts, expr)
        cached = self._lhs_memo.get(key)
        if cached is None:
            if len(self._lhs_memo) > 10_000:
                self._lhs_memo.clear()
            cached = (self._instant(engine, expr, query_ts), names)
            self._lhs_memo[key] = cached
        return cached[0]

    def _split_values(self, split: tuple[str, frozenset[str], str, float], group: RuleGroup, engine: Engine,
                      query_ts: int) -> list[tuple[dict[str, str], float]]:
        """``<expr> <cmp> <number>``: ``<expr>`` is evaluated once per time for every rule that has
        it (warning/critical pairs, one expression per quantile...), the comparison is applied here
        with PromQL's filter semantics (keep the series where it holds, with the left value)."""
        lhs, names, op, number = split
        cmp = _CMP[op]
        return [(lb, v) for lb, v in self._memo_instant(group, engine, query_ts, lhs, names) if cmp(v, number)]

    def _forget_lhs(self, project: str, written: set[str]) -> None:
        if self._lhs_memo:
            self._lhs_memo = {k: v for k, v in self._lhs_memo.items() if k[0] != project or not (v[1] & written)}

    def _error_values(self, rule: Rule, group: RuleGroup, query_ts: int) -> list[tuple[dict[str, str], float]]:
        errors = self.sources.errors
        if errors is None:
            raise RuntimeError("error rules need the errors store, which is not available")
        until = datetime.fromtimestamp(query_ts / 1000, UTC)
        since = datetime.fromtimestamp((query_ts - rule.window_ms) / 1000, UTC)
        if rule.error_kind == "new_issue":
            issues = errors.new_issues(group.project, since, until)
        elif rule.error_kind == "regression":
            issues = errors.regressed_issues(group.project, since, until)
        else:
            issues = errors.issue_event_counts(group.project, since, until)
        out = []
        for issue in issues:
            labels = {"issue_id": str(issue.get("issue_id", "")), "title": str(issue.get("title", ""))[:200]}
            if issue.get("level"):
                labels["level"] = str(issue["level"])
            value = float(issue.get("count", 1)) if rule.error_kind == "event_rate" else 1.0
            out.append((labels, value))
        return out

    def _record(self, rs: RuleState, group: RuleGroup, engine: Engine, query_ts: int, ts_ms: int) -> None:
        rule = rs.rule
        values = self._values(rs, group, engine, query_ts)
        out: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], float]] = {}
        for labels, value in values:
            lb = {k: v for k, v in labels.items() if k != "__name__"}
            lb.update(rule.labels)
            lb["__name__"] = rule.name
            key = _sorted_key(lb)
            if key in out:
                raise ValueError("vector contains metrics with the same labelset after applying rule labels")
            out[key] = (lb, value)
        if group.limit and len(out) > group.limit:
            raise ValueError(f"exceeded limit of {group.limit} with {len(out)} series")
        if self.write_series:
            samples = [(lb, ts_ms, v) for lb, v in out.values()]
            samples += [(dict(k), ts_ms, STALE_NAN) for k in rs.written - out.keys()]
            self.sources.append(group.project, samples)
            self._forget_lhs(group.project, {rule.name})
        rs.written = set(out)

    def _alert(self, rs: RuleState, gs: GroupState, engine: Engine, query_ts: int, ts_ms: int) -> None:
        rule = rs.rule
        group = gs.group
        values = self._values(rs, group, engine, query_ts)

        def query(expr: str) -> list[Sample]:
            res = engine.instant(expr, query_ts)
            if res.type == "scalar":
                return [Sample({}, res.scalar)]
            return [Sample(dict(s.labels), float(s.values[0])) for s in res.series]

        # Thresholds decide which series alert, and at which severity.
        selected: list[tuple[dict[str, str], float, str, int | None]] = []
        if rule.thresholds:
            for labels, value in values:
                for severity, th in rule.thresholds:
                    if th.holds(value):
                        selected.append((labels, value, severity, None))
                        break
        else:
            selected = [(lb, v, "", None) for lb, v in values]
        if rule.no_data_ms is not None:
            if values:
                rs.nodata_since = None
            else:
                if rs.nodata_since is None:
                    rs.nodata_since = ts_ms
                selected.append(({"nodata": "true"}, math.nan, "", rule.no_data_ms))

        result: dict[str, tuple[dict[str, str], dict[str, str], float, int | None]] = {}
        for labels, value, severity, hold in selected:
            base = {k: v for k, v in labels.items() if k != "__name__"}
            ext = dict(self.external_labels)
            lb = dict(base)
            for k, v in rule.labels.items():
                lb[k] = expand(v, labels=base, value=value, external_labels=ext, external_url=self.external_url,
                               query=query)
            lb["alertname"] = rule.name
            if severity:
                lb["severity"] = severity
            lb = dict(sorted(lb.items()))
            identity_labels = {k: v for k, v in lb.items() if not (severity and k == "severity")}
            ident = label_fingerprint(identity_labels)
            if ident in result:
                raise ValueError("vector contains metrics with the same labelset after applying alert labels")
            ann = {k: expand(v, labels=base, value=value, external_labels=ext, external_url=self.external_url,
                             query=query) for k, v in rule.annotations.items()}
            result[ident] = (lb, ann, value, hold)

        for ident, (lb, ann, value, hold) in result.items():
            a = rs.active.get(ident)
            if a is not None and a.state != INACTIVE:
                a.value, a.annotations, a.labels = value, ann, lb
                continue
            active_at = ts_ms
            if hold is not None and rs.nodata_since is not None:
                active_at = rs.nodata_since  # the grace period counts from when data stopped
            rs.active[ident] = ActiveAlert(lb, ann, PENDING, active_at, value, hold_ms=hold)

        self._restore_for_state(rs, gs, ts_ms)

        n_active = 0
        for ident, a in list(rs.active.items()):
            if ident not in result:
                keep = False
                if a.state == FIRING and rule.keep_firing_for_ms > 0:
                    if a.keep_firing_since is None:
                        a.keep_firing_since = ts_ms
                    if ts_ms - a.keep_firing_since < rule.keep_firing_for_ms:
                        keep = True
                if a.state == PENDING or (a.resolved_at is not None and ts_ms - a.resolved_at > RESOLVED_RETENTION_MS):
                    del rs.active[ident]
                if a.state != INACTIVE and not keep:
                    a.state = INACTIVE
                    a.resolved_at = ts_ms
                if not keep:
                    continue
            else:
                a.keep_firing_since = None
            n_active += 1
            hold_ms = rule.for_ms if a.hold_ms is None else a.hold_ms
            if a.state == PENDING and ts_ms - a.active_at >= hold_ms:
                a.state = FIRING
                a.fired_at = ts_ms
        if group.limit and n_active > group.limit:
            rs.active.clear()
            raise ValueError(f"exceeded limit of {group.limit} with {n_active} alerts")

        if self.write_series:
            samples = []
            now_keys = set()
            for a in rs.active.values():
                if a.state == INACTIVE:
                    continue
                alerts_lb = {**a.labels, "__name__": "ALERTS", "alertstate": a.state}
                for_lb = {**a.labels, "__name__": "ALERTS_FOR_STATE"}
                samples.append((alerts_lb, ts_ms, 1.0))
                samples.append((for_lb, ts_ms, a.active_at / 1000))
                now_keys.add(_sorted_key(alerts_lb))
                now_keys.add(_sorted_key(for_lb))
            samples += [(dict(k), ts_ms, STALE_NAN) for k in rs.written - now_keys]
            self.sources.append(group.project, samples)
            rs.written = now_keys
            if samples:
                self._forget_lhs(group.project, {"ALERTS", "ALERTS_FOR_STATE"})

    def _restore_for_state(self, rs: RuleState, gs: GroupState, ts_ms: int) -> None:
        """After a restart, shift pending alerts' ``active_at`` as Prometheus's for_grace_period does.

        An alert that was pending when the server went down resumes its countdown (the downtime
        does not count towards ``for``), and never fires sooner than the grace period after the
        restart, so a restart cannot make an alert fire on data nobody evaluated.
        """
        down_at = gs.restored_down_at_ms
        if down_at is None:
            return
        hold = rs.rule.for_ms
        for a in rs.active.values():
            if a.state != PENDING or a.active_at >= down_at or a.hold_ms is not None:
                continue
            if hold < self.for_grace_period_ms or ts_ms - down_at > self.outage_tolerance_ms:
                a.active_at = ts_ms
                continue
            remaining = hold - (down_at - a.active_at)
            if remaining <= 0:
                continue
            if remaining < self.for_grace_period_ms:
                a.active_at = ts_ms + self.for_grace_period_ms - hold
            else:
                a.active_at += ts_ms - down_at

    def _to_send(self, rs: RuleState, gs: GroupState, ts_ms: int) -> list[Alert]:
        out = []
        for a in rs.active.values():
            if a.state == PENDING:
                continue
            url = self._generator_url(rs.rule, a.labels, gs.group.project)
            if a.state == INACTIVE:
                due = a.last_sent_at is None or (a.resolved_at is not None and a.resolved_at > a.last_sent_at) or (
                    ts_ms - a.last_sent_at >= self.resend_delay_ms)
                if not due:
                    continue
                ends = a.resolved_at
            else:
                if a.last_sent_at is not None and ts_ms - a.last_sent_at < self.resend_delay_ms and (
                        a.sent_labels == a.labels):
                    continue
                ends = ts_ms + 4 * max(gs.interval_ms, self.resend_delay_ms)
            if a.sent_labels is not None and a.sent_labels != a.labels:
                # The severity switched: the old label set is a different alert to the receiver.
                out.append(Alert(dict(a.sent_labels), dict(a.annotations), _dt(a.fired_at or a.active_at), _dt(ts_ms),
                                 url, a.value))
            out.append(Alert(dict(a.labels), dict(a.annotations), _dt(a.fired_at or a.active_at), _dt(ends), url,
                             None if math.isnan(a.value) else a.value))
            a.last_sent_at = ts_ms
            a.sent_labels = dict(a.labels)
        return out

    def _generator_url(self, rule: Rule, labels: Mapping[str, str] | None = None, project: str = "default") -> str:
        """Where an alert's link takes the on-call: the page that shows why it fired.

        PromQL rules open the graph page as Prometheus's do; log rules the log explorer with the
        rule's query over a few of its windows; error rules the issue (the issues list for a rule
        that is not about one issue).
        """
        quote = urllib.parse.quote_plus
        if rule.source == "log":
            back = max(3 * rule.window_ms, 15 * 60_000) // 60_000
            return f"{self.external_url}/?q={quote(rule.expr)}&start=-{back}m"
        if rule.source == "error":
            issue = (labels or {}).get("issue_id", "")
            return f"{self.external_url}/issues/{quote(issue)}" if issue.isdigit() else f"{self.external_url}/issues"
        scope = f"&project={quote(project)}" if project and project != "default" else ""
        return f"{self.external_url}/graph?g0.expr={quote(rule.query)}&g0.tab=1{scope}"


_CMP: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _names_read(node: Node) -> frozenset[str] | None:
    """Metric names an expression reads, or None if a selector does not name its metric (it could
    read what a recording rule writes, so its results are not shared between rules)."""
    from .sources import _metric_name, selector_windows

    names = set()
    for vs, _, _ in selector_windows(node, 0):
        name = _metric_name(vs)
        if name is None:
            return None
        names.add(name)
    return frozenset(names)


def _threshold_split(expr: str, node: Node) -> tuple[str, frozenset[str], str, float] | None:
    """Split ``<vector expr> <cmp> <number>`` (no ``bool``) into its parts, else None."""
    from stackwatch.query.promql._ast import Binary, NumberLit

    if not (isinstance(node, Binary) and node.op in _CMP and not node.return_bool
            and isinstance(node.rhs, NumberLit) and node.lhs.type == "vector"):
        return None
    names = _names_read(node.lhs)
    if names is None:
        return None
    try:
        import promql_parser

        lhs = promql_parser.parse(expr).lhs.prettify()
    except BaseException:  # the parser panics with BaseException: then no split
        return None
    return (lhs, names, node.op, float(node.rhs.value))


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:500]


def group_evaluation_order(groups: Sequence[GroupState]) -> list[GroupState]:
    return sorted(groups, key=lambda g: (g.group.file, g.group.name))

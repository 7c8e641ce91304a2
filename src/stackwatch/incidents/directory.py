"""On-call schedules, overrides, contact profiles and escalation policies in the meta store.

Everything here is configuration people edit through the API; validation happens on the way in
(a 4xx that names the field), so the escalation engine never meets a schedule it cannot read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stackwatch.errors import BadRequest, NotFound, StackwatchError
from stackwatch.incidents.oncall import Override, on_call, parse_layers, parse_timezone
from stackwatch.storage.meta.db import MetaStore
from stackwatch.storage.meta.models import EscalationPolicy, OncallOverride, OncallProfile, OncallSchedule

__all__ = ["Conflict", "Directory", "iso", "parse_instant"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@:-]{0,199}$")


class Conflict(StackwatchError):
    """409: the request is valid but the object's state does not allow it (already resolved...)."""

    status_code = 409


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def parse_instant(value: Any, where: str) -> datetime:
    """An RFC 3339 / ISO 8601 instant or Unix seconds; a naive time is taken as UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            parsed = datetime.fromtimestamp(float(value), UTC)
        except (ValueError, OverflowError, OSError):
            raise BadRequest(f"{where}: {value!r} is not a usable Unix time") from None
    else:
        text = str(value or "").strip()
        try:
            parsed = datetime.fromtimestamp(float(text), UTC)
        except (ValueError, OverflowError, OSError):
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise BadRequest(f"{where}: expected an RFC 3339 time or Unix seconds, got {value!r}") from None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    # Rotations and reports add days and weeks to it: keep far from datetime's limits.
    if not 1970 <= parsed.astimezone(UTC).year <= 2200:
        raise BadRequest(f"{where}: {value!r} is outside the years 1970 to 2200")
    return parsed


def _check_name(name: Any, where: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.match(name.strip()):
        raise BadRequest(f"{where}: expected 1-200 letters, digits, spaces or '_.@:-', got {name!r}")
    if name.strip().isdigit() and where == "name":
        raise BadRequest(f"{where}: {name!r} would be read as an id in URLs; include a letter")
    return name.strip()


def _ref(column: Any, ref: str | int) -> Any:
    text = str(ref)
    return column.id == int(text) if text.isdigit() else column.name == text


def validate_levels(raw: Any) -> list[dict[str, Any]]:
    """Escalation levels: ``[{"targets": [...], "delay_minutes": N}, ...]`` in paging order."""
    if not isinstance(raw, list) or not raw:
        raise BadRequest("levels: expected a non-empty list of {targets, delay_minutes}")
    out = []
    for i, level in enumerate(raw):
        where = f"levels[{i}]"
        if not isinstance(level, dict):
            raise BadRequest(f"{where}: expected an object")
        unknown = set(level) - {"targets", "delay_minutes"}
        if unknown:
            raise BadRequest(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        delay = level.get("delay_minutes", 15)
        if (
            not isinstance(delay, int | float)
            or isinstance(delay, bool)
            or not math.isfinite(delay)
            or not 0 <= delay <= 7 * 24 * 60
        ):
            raise BadRequest(f"{where}.delay_minutes: expected a number of minutes from 0 to 10080")
        targets = level.get("targets")
        if not isinstance(targets, list) or not targets:
            raise BadRequest(f"{where}.targets: expected a non-empty list")
        clean = []
        for j, target in enumerate(targets):
            twhere = f"{where}.targets[{j}]"
            if not isinstance(target, dict):
                raise BadRequest(f"{twhere}: expected an object such as {{'schedule': 'ops', 'layer': 'primary'}}")
            kinds = [k for k in ("schedule", "user", "receiver") if k in target]
            if len(kinds) != 1:
                raise BadRequest(f"{twhere}: give exactly one of 'schedule', 'user' or 'receiver'")
            unknown = set(target) - {"schedule", "layer", "user", "receiver"}
            if unknown or ("layer" in target and kinds != ["schedule"]):
                raise BadRequest(f"{twhere}: unexpected field(s) {', '.join(sorted(unknown or {'layer'}))}")
            value = target[kinds[0]]
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(f"{twhere}.{kinds[0]}: expected a non-empty string")
            item = {kinds[0]: value.strip()}
            if kinds == ["schedule"]:
                item["layer"] = str(target.get("layer") or "primary")
            clean.append(item)
        out.append({"targets": clean, "delay_minutes": delay})
    return out


class Directory:
    """CRUD for schedules, overrides, profiles and policies, and the "who is on call" answer."""

    def __init__(self, meta: MetaStore, clock: Callable[[], datetime]) -> None:
        self.meta = meta
        self.clock = clock
        #: The receivers pages can go to (the alerting configuration's and the incident
        #: webhooks'), set where the sender is known; None: not checked.
        self.receiver_names: Callable[[], set[str]] | None = None

    # -- references -----------------------------------------------------------------------------
    #
    # A policy that names a schedule, layer, user or receiver that does not exist pages nobody,
    # and that shows only when an incident opens, at night. So every reference is checked when
    # it is written, and what a policy uses cannot be deleted or renamed from under it.

    def _check_targets(self, s: Session, levels: list[dict[str, Any]]) -> None:
        schedules = {row.name: row for row in s.scalars(sa.select(OncallSchedule))}
        by_id = {str(row.id): row for row in schedules.values()}
        profiles = set(s.scalars(sa.select(OncallProfile.user)))
        receivers = self.receiver_names() if self.receiver_names is not None else None
        for i, level in enumerate(levels):
            for j, target in enumerate(level["targets"]):
                where = f"levels[{i}].targets[{j}]"
                if "schedule" in target:
                    row = schedules.get(target["schedule"]) or by_id.get(target["schedule"])
                    if row is None:
                        raise BadRequest(f"{where}.schedule: no on-call schedule {target['schedule']!r}")
                    layers = [layer.get("name") for layer in row.layers]
                    if target["layer"] not in layers:
                        raise BadRequest(f"{where}.layer: schedule {row.name!r} has no layer {target['layer']!r} "
                                         f"(it has {', '.join(map(repr, layers))})")
                elif "user" in target:
                    if target["user"] not in profiles:
                        raise BadRequest(f"{where}.user: {target['user']!r} has no on-call profile to be paged "
                                         f"through (PUT /api/v1/oncall/profiles/{target['user']} with receivers)")
                elif receivers is not None and target["receiver"] not in receivers:
                    raise BadRequest(f"{where}.receiver: no receiver {target['receiver']!r} in the alerting "
                                     "configuration or incidents.webhooks")

    def _policies_using(self, s: Session, kind: str, names: set[str], layer: str | None = None) -> list[str]:
        """Names of the policies with a target of ``kind`` naming one of ``names``."""
        out = []
        for policy in s.scalars(sa.select(EscalationPolicy)):
            for level in policy.levels:
                for target in level["targets"]:
                    if target.get(kind) in names and (layer is None or target.get("layer") == layer):
                        out.append(policy.name)
        return sorted(set(out))

    def _refuse_if_used(self, s: Session, kind: str, names: set[str], what: str, layer: str | None = None) -> None:
        used = self._policies_using(s, kind, names, layer)
        if used:
            raise Conflict(f"{what} is used by escalation polic{'y' if len(used) == 1 else 'ies'} "
                           f"{', '.join(map(repr, used))}: change {'it' if len(used) == 1 else 'them'} first")

    # -- schedules -----------------------------------------------------------------------------

    @staticmethod
    def _schedule_json(s: OncallSchedule, overrides: list[OncallOverride] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": s.id,
            "name": s.name,
            "description": s.description,
            "timezone": s.timezone,
            "layers": s.layers,
            "created_at": iso(s.created_at),
            "updated_at": iso(s.updated_at),
        }
        if overrides is not None:
            out["overrides"] = [Directory._override_json(o) for o in overrides]
        return out

    @staticmethod
    def _override_json(o: OncallOverride) -> dict[str, Any]:
        return {
            "id": o.id,
            "layer": o.layer,
            "user": o.user,
            "start": iso(o.start_at),
            "end": iso(o.end_at),
            "reason": o.reason,
        }

    @staticmethod
    def _validate_schedule(spec: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        tz = str(spec.get("timezone") or "UTC")
        parse_timezone(tz)
        layers = [layer.to_json() for layer in parse_layers(spec.get("layers"))]
        return tz, layers

    def _schedule(self, s: Session, ref: str | int) -> OncallSchedule:
        found = s.scalar(sa.select(OncallSchedule).where(_ref(OncallSchedule, ref)))
        if found is None:
            raise NotFound(f"no on-call schedule {ref!r}")
        return found

    def create_schedule(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = _check_name(spec.get("name"))
        tz, layers = self._validate_schedule(spec)
        now = self.clock()
        try:
            with self.meta.session() as s:
                row = OncallSchedule(name=name, description=str(spec.get("description") or ""), timezone=tz,
                                     layers=layers, created_at=now, updated_at=now)
                s.add(row)
                s.flush()
                return self._schedule_json(row, [])
        except IntegrityError:
            raise Conflict(f"an on-call schedule named {name!r} already exists") from None

    def update_schedule(self, ref: str | int, spec: dict[str, Any]) -> dict[str, Any]:
        tz, layers = self._validate_schedule(spec)
        try:
            with self.meta.session() as s:
                row = self._schedule(s, ref)
                if "name" in spec and _check_name(spec["name"]) != row.name:
                    self._refuse_if_used(s, "schedule", {row.name}, f"schedule {row.name!r} (by that name)")
                    row.name = _check_name(spec["name"])
                kept = {layer.get("name") for layer in layers}
                for gone in sorted({layer.get("name") for layer in row.layers} - kept):
                    self._refuse_if_used(s, "schedule", {row.name, str(row.id)}, f"layer {gone!r} of {row.name!r}",
                                         layer=gone)
                if "description" in spec:
                    row.description = str(spec["description"] or "")
                row.timezone, row.layers, row.updated_at = tz, layers, self.clock()
                s.flush()
                return self._schedule_json(row, self._overrides(s, row.id))
        except IntegrityError:
            raise Conflict(f"an on-call schedule named {spec.get('name')!r} already exists") from None

    def delete_schedule(self, ref: str | int) -> None:
        with self.meta.session() as s:
            row = self._schedule(s, ref)
            self._refuse_if_used(s, "schedule", {row.name, str(row.id)}, f"schedule {row.name!r}")
            s.delete(row)

    def list_schedules(self) -> list[dict[str, Any]]:
        with self.meta.session() as s:
            rows = s.scalars(sa.select(OncallSchedule).order_by(OncallSchedule.name)).all()
            return [self._schedule_json(r) for r in rows]

    def get_schedule(self, ref: str | int) -> dict[str, Any]:
        with self.meta.session() as s:
            row = self._schedule(s, ref)
            return self._schedule_json(row, self._overrides(s, row.id))

    @staticmethod
    def _overrides(s: Session, schedule_id: int) -> list[OncallOverride]:
        return list(s.scalars(sa.select(OncallOverride).where(OncallOverride.schedule_id == schedule_id)
                              .order_by(OncallOverride.start_at, OncallOverride.id)))

    def add_override(self, ref: str | int, spec: dict[str, Any]) -> dict[str, Any]:
        user = spec.get("user")
        if not isinstance(user, str) or not user.strip():
            raise BadRequest("user: expected the name of the person taking over")
        start = parse_instant(spec.get("start"), "start")
        end = parse_instant(spec.get("end"), "end")
        if end <= start:
            raise BadRequest("end: must be after start")
        with self.meta.session() as s:
            row = self._schedule(s, ref)
            layer = str(spec.get("layer") or "primary")
            names = [layer_["name"] for layer_ in row.layers]
            if layer not in names:
                raise BadRequest(f"layer: schedule {row.name!r} has no layer {layer!r} (it has {', '.join(names)})")
            o = OncallOverride(schedule_id=row.id, layer=layer, user=user.strip(), start_at=start, end_at=end,
                               reason=str(spec.get("reason") or ""), created_at=self.clock())
            s.add(o)
            s.flush()
            return self._override_json(o)

    def delete_override(self, ref: str | int, override_id: int) -> None:
        with self.meta.session() as s:
            row = self._schedule(s, ref)
            o = s.get(OncallOverride, override_id)
            if o is None or o.schedule_id != row.id:
                raise NotFound(f"schedule {row.name!r} has no override {override_id}")
            s.delete(o)

    def who(self, at: datetime | None = None, schedule: str | int | None = None,
            layer: str | None = None) -> list[dict[str, Any]]:
        """Who is on call at ``at`` (default now), for one schedule or all, one layer or all."""
        at = at or self.clock()
        out = []
        with self.meta.session() as s:
            if schedule is not None:
                rows = [self._schedule(s, schedule)]
            else:
                rows = list(s.scalars(sa.select(OncallSchedule).order_by(OncallSchedule.name)))
            for row in rows:
                tz = parse_timezone(row.timezone)
                layers = parse_layers(row.layers)
                if layer is not None and schedule is not None and layer not in [x.name for x in layers]:
                    raise NotFound(f"schedule {row.name!r} has no layer {layer!r}")
                overrides = [Override(o.layer, o.user, o.start_at, o.end_at, o.id) for o in self._overrides(s, row.id)]
                for item in layers:
                    if layer is not None and item.name != layer:
                        continue
                    answer = on_call(item, tz, at, overrides)
                    out.append({"schedule": row.name, "timezone": row.timezone, **answer.to_json()})
        return out

    def on_call_user(self, schedule: str, layer: str, at: datetime) -> str | None:
        answers = self.who(at, schedule, layer)
        return answers[0]["user"] if answers else None

    # -- contact profiles ----------------------------------------------------------------------

    @staticmethod
    def _profile_json(p: OncallProfile) -> dict[str, Any]:
        return {"user": p.user, "name": p.name, "receivers": p.receivers}

    def put_profile(self, user: str, spec: dict[str, Any]) -> dict[str, Any]:
        user = _check_name(user, "user")
        receivers = spec.get("receivers")
        if not isinstance(receivers, list) or not all(isinstance(r, str) and r.strip() for r in receivers):
            raise BadRequest("receivers: expected a list of receiver names (e.g. ['ann-email', 'ann-phone'])")
        if not receivers:
            raise BadRequest("receivers: at least one (a profile without receivers pages nobody; "
                             f"DELETE /api/v1/oncall/profiles/{user} to remove it)")
        known = self.receiver_names() if self.receiver_names is not None else None
        for r in receivers:
            if known is not None and r.strip() not in known:
                raise BadRequest(f"receivers: no receiver {r.strip()!r} in the alerting configuration or "
                                 "incidents.webhooks")
        with self.meta.session() as s:
            row = s.scalar(sa.select(OncallProfile).where(OncallProfile.user == user))
            if row is None:
                row = OncallProfile(user=user, created_at=self.clock())
                s.add(row)
            row.name = str(spec.get("name") or row.name or "")
            row.receivers = [r.strip() for r in receivers]
            s.flush()
            return self._profile_json(row)

    def get_profile(self, user: str) -> dict[str, Any]:
        with self.meta.session() as s:
            row = s.scalar(sa.select(OncallProfile).where(OncallProfile.user == user))
            if row is None:
                raise NotFound(f"no on-call profile for {user!r}")
            return self._profile_json(row)

    def list_profiles(self) -> list[dict[str, Any]]:
        with self.meta.session() as s:
            return [self._profile_json(p) for p in s.scalars(sa.select(OncallProfile).order_by(OncallProfile.user))]

    def delete_profile(self, user: str) -> None:
        with self.meta.session() as s:
            row = s.scalar(sa.select(OncallProfile).where(OncallProfile.user == user))
            if row is None:
                raise NotFound(f"no on-call profile for {user!r}")
            self._refuse_if_used(s, "user", {user}, f"the on-call profile of {user!r}")
            # Through a schedule too: on their shift, a policy paging that layer would page nobody.
            for schedule in s.scalars(sa.select(OncallSchedule)):
                for layer in schedule.layers:
                    if user in (layer.get("participants") or []):
                        self._refuse_if_used(
                            s, "schedule", {schedule.name, str(schedule.id)},
                            f"the on-call profile of {user!r} (on layer {layer.get('name')!r} of schedule "
                            f"{schedule.name!r})", layer.get("name"))
            s.delete(row)

    def receivers_of(self, user: str) -> list[str]:
        with self.meta.session() as s:
            row = s.scalar(sa.select(OncallProfile).where(OncallProfile.user == user))
            return list(row.receivers) if row else []

    # -- escalation policies -------------------------------------------------------------------

    @staticmethod
    def _policy_json(p: EscalationPolicy) -> dict[str, Any]:
        return {
            "id": p.id,
            "name": p.name,
            "description": p.description,
            "levels": p.levels,
            "repeat": p.repeat,
            "default": p.is_default,
            "created_at": iso(p.created_at),
            "updated_at": iso(p.updated_at),
        }

    @staticmethod
    def _repeat(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
            raise BadRequest("repeat: expected how many more times to run the levels, 0 to 100")
        return value

    def _policy(self, s: Session, ref: str | int) -> EscalationPolicy:
        found = s.scalar(sa.select(EscalationPolicy).where(_ref(EscalationPolicy, ref)))
        if found is None:
            raise NotFound(f"no escalation policy {ref!r}")
        return found

    def create_policy(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = _check_name(spec.get("name"))
        levels = validate_levels(spec.get("levels"))
        repeat = self._repeat(spec.get("repeat", 0))
        now = self.clock()
        try:
            with self.meta.session() as s:
                self._check_targets(s, levels)
                if spec.get("default"):
                    s.execute(sa.update(EscalationPolicy).values(is_default=False))
                row = EscalationPolicy(name=name, description=str(spec.get("description") or ""), levels=levels,
                                       repeat=repeat, is_default=bool(spec.get("default")), created_at=now,
                                       updated_at=now)
                s.add(row)
                s.flush()
                return self._policy_json(row)
        except IntegrityError:
            raise Conflict(f"an escalation policy named {name!r} already exists") from None

    def update_policy(self, ref: str | int, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            with self.meta.session() as s:
                row = self._policy(s, ref)
                if "name" in spec:
                    row.name = _check_name(spec["name"])
                if "levels" in spec:
                    levels = validate_levels(spec["levels"])
                    self._check_targets(s, levels)
                    row.levels = levels
                if "repeat" in spec:
                    row.repeat = self._repeat(spec["repeat"])
                if "description" in spec:
                    row.description = str(spec["description"] or "")
                if "default" in spec:
                    if spec["default"]:
                        s.execute(sa.update(EscalationPolicy).where(EscalationPolicy.id != row.id)
                                  .values(is_default=False))
                    row.is_default = bool(spec["default"])
                row.updated_at = self.clock()
                s.flush()
                return self._policy_json(row)
        except IntegrityError:
            raise Conflict(f"an escalation policy named {spec.get('name')!r} already exists") from None

    def delete_policy(self, ref: str | int) -> None:
        with self.meta.session() as s:
            s.delete(self._policy(s, ref))

    def list_policies(self) -> list[dict[str, Any]]:
        with self.meta.session() as s:
            return [self._policy_json(p) for p in s.scalars(sa.select(EscalationPolicy).order_by(EscalationPolicy.name))]

    def get_policy(self, ref: str | int) -> dict[str, Any]:
        with self.meta.session() as s:
            return self._policy_json(self._policy(s, ref))

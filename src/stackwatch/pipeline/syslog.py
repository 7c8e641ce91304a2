"""Syslog messages (RFC 5424 and RFC 3164) into raw log events: the one parser of the format.

Both the syslog listener (``ingest/syslog.py``, messages off the network) and the pipeline's
parse stage (syslog lines read from files, shippers or ``stackwatch logs import``) use it, so
a message gets the same fields whichever way it arrives:

======================  ==============================================================
``severity_text``       PRI severity: emerg/alert/crit -> ``FATAL``, err -> ``ERROR``,
                        warning -> ``WARN``, notice/info -> ``INFO``, debug -> ``DEBUG``
``severity_number``     the OTel number for it (the mapping OTel's syslog receiver uses)
``timestamp``           ns since the epoch, when the message has a valid one
``host``                HOSTNAME (else the sender's address, as rsyslog's ``fromhost``)
``service``             APP-NAME (RFC 5424) or TAG (RFC 3164)
``message``             MSG
``log_type``            ``"security"`` for the auth/authpriv/security facilities, else ``"system"``
``syslog.facility``     the facility keyword (``auth``, ``local0``...)
``syslog.severity``     the severity keyword (``err``, ``notice``...)
``process.pid``         PROCID / the TAG's ``[pid]``, an int (OTel's name, so syslog lines and
                        SDK logs of one process correlate); ``syslog.procid`` when not numeric
``syslog.msgid``        MSGID
``syslog.sd.<ID>.<P>``  each RFC 5424 structured-data parameter
======================  ==============================================================

Fields are flat (dotted keys), the raw-event form normalize turns into attributes.

``strict`` decides what counts as syslog. The listener knows every message is syslog and takes
whatever parts it recognises (Python's ``SysLogHandler`` sends ``<PRI>`` + the record and
nothing else; a line without a valid PRI is kept whole as the message). The parse stage sees
arbitrary lines, so it accepts only a valid RFC 5424 header or an RFC 3164 line with a
timestamp; anything else is left for the other formats.
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["FACILITIES", "SYSLOG_SEVERITIES", "match_syslog", "parse_syslog"]

#: Facility codes (RFC 5424 table 1) and the keywords syslog implementations use for them.
FACILITIES: Final[tuple[str, ...]] = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news",
    "uucp", "cron", "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)  # fmt: skip

#: Severity code -> (keyword, model severity name, OTel severity number).
SYSLOG_SEVERITIES: Final[tuple[tuple[str, str, int], ...]] = (
    ("emerg", "FATAL", 24),
    ("alert", "FATAL", 23),
    ("crit", "FATAL", 22),
    ("err", "ERROR", 17),
    ("warning", "WARN", 13),
    ("notice", "INFO", 10),
    ("info", "INFO", 9),
    ("debug", "DEBUG", 5),
)

_SECURITY_FACILITIES: Final = frozenset({4, 10, 13})  # auth, authpriv, security (log audit)
_MONTHS: Final = {m: i for i, m in enumerate(calendar.month_abbr) if m}

_PRI = re.compile(r"<(\d{1,3})>")
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)
_BSD_TIME = re.compile(r"([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?")
_TAG = re.compile(r"([^\s:\[\]]{1,128})(?:\[([^\]\s]{0,128})\])?:(?: |$)")
_SD_ID = re.compile(r'\[([^ \]="]{1,32})')
_SD_PARAM = re.compile(r' ([^ \]="]{1,32})="((?:[^"\\]|\\.)*)"', re.DOTALL)
_SD_UNESCAPE = re.compile(r'\\(["\\\]])')


def parse_syslog(line: str, *, peer: str | None = None, now: float | None = None) -> dict[str, Any]:
    """Parse one message (without its transport framing) into a flat raw event, leniently.

    ``peer`` (the sender's address) becomes ``host`` when the message names none. RFC 3164
    timestamps carry neither year nor zone: they are read as UTC in the year that puts them
    no more than a day after ``now`` (default: the current time), so December messages
    arriving in January land in the right year.
    """
    event = _parse(line, peer, now, strict=False)
    assert event is not None  # lenient parsing always gives an event
    return event


def match_syslog(line: str, *, now: float | None = None) -> dict[str, Any] | None:
    """Parse ``line`` if it is recognisably syslog (a valid RFC 5424 header, or RFC 3164 with a
    timestamp), else None: for the parse stage, which sees lines of every format."""
    return _parse(line, None, now, strict=True)


def _parse(line: str, peer: str | None, now: float | None, *, strict: bool) -> dict[str, Any] | None:
    line = line.rstrip("\r\n\x00")
    match = _PRI.match(line)
    event: dict[str, Any]
    if match is None or int(match.group(1)) > 191:
        if match is None:  # no PRI, as in a syslog file: the BSD shape with a timestamp
            event = {"log_type": "system"}
            if _parse_3164(line, event, now, need_time=True):
                if peer and "host" not in event:
                    event["host"] = peer
                return event
        if strict:
            return None
        event = {"message": line, "log_type": "system"}
        if peer:
            event["host"] = peer
        return event
    facility, severity = divmod(int(match.group(1)), 8)
    keyword, name, number = SYSLOG_SEVERITIES[severity]
    event = {
        "severity_text": name,
        "severity_number": number,
        "log_type": "security" if facility in _SECURITY_FACILITIES else "system",
        "syslog.facility": FACILITIES[facility],
        "syslog.severity": keyword,
    }
    rest = line[match.end() :]
    is_5424 = rest.startswith("1 ") and _parse_5424(rest[2:], event)
    if not is_5424 and not _parse_3164(rest, event, now, need_time=strict):
        return None  # only reachable when strict
    if peer and "host" not in event:
        event["host"] = peer
    return event


def _procid(value: str, event: dict[str, Any]) -> None:
    if value.isdigit() and len(value) < 19:
        event["process.pid"] = int(value)
    else:
        event["syslog.procid"] = value


def _parse_5424(rest: str, event: dict[str, Any]) -> bool:
    """Fill ``event`` from an RFC 5424 header (after ``VERSION SP``); False if it is not one."""
    fields = rest.split(" ", 5)
    if len(fields) < 5:
        return False
    stamp, host, app, procid, msgid = fields[:5]
    remainder = fields[5] if len(fields) == 6 else "-"
    if remainder.startswith("-"):
        if len(remainder) > 1 and remainder[1] != " ":
            return False
        sd: dict[str, str] = {}
        message = remainder[2:]
    elif remainder.startswith("["):
        parsed = _parse_structured_data(remainder)
        if parsed is None:
            return False
        sd, end = parsed
        message = remainder[end + 1 :] if remainder[end : end + 1] == " " else remainder[end:]
    else:
        return False
    if stamp != "-":
        match = _RFC3339.fullmatch(stamp)
        if match is None:
            return False
        timestamp = _rfc3339_ns(match)
        if timestamp is not None:
            event["timestamp"] = timestamp
    if host != "-":
        event["host"] = host
    if app != "-":
        event["service"] = app
    if procid != "-":
        _procid(procid, event)
    if msgid != "-":
        event["syslog.msgid"] = msgid
    event.update(sd)
    event["message"] = message.removeprefix("\ufeff")  # RFC 5424 marks UTF-8 MSGs with a BOM
    return True


def _parse_structured_data(text: str) -> tuple[dict[str, str], int] | None:
    """Parse SD-ELEMENTs at the start of ``text``: (``syslog.sd.<id>.<param>`` -> value, end offset)."""
    params: dict[str, str] = {}
    position = 0
    while position < len(text) and text[position] == "[":
        element = _SD_ID.match(text, position)
        if element is None:
            return None
        sd_id = element.group(1)
        position = element.end()
        while (param := _SD_PARAM.match(text, position)) is not None:
            params[f"syslog.sd.{sd_id}.{param.group(1)}"] = _SD_UNESCAPE.sub(r"\1", param.group(2))
            position = param.end()
        if text[position : position + 1] != "]":
            return None
        position += 1
    return params, position


def _parse_3164(rest: str, event: dict[str, Any], now: float | None, *, need_time: bool = False) -> bool:
    """Take what an RFC 3164 (BSD) message offers: TIMESTAMP HOSTNAME TAG[PID]: MSG.

    Every part is optional in practice (Python's ``SysLogHandler`` sends ``<PRI>`` + the
    formatted record and nothing else), so each is recognised by its shape. With
    ``need_time`` a message without a timestamp is refused (False, ``event`` untouched).
    """
    timestamp: int | None = None
    has_time = False
    match = _BSD_TIME.match(rest)
    if match is not None:
        has_time = True
        timestamp = _bsd_ns(match, now)
    else:
        match = _RFC3339.match(rest)  # rsyslog's forwarding format puts RFC 3339 time here
        if match is not None:
            has_time = True
            timestamp = _rfc3339_ns(match)
    if need_time and not has_time:
        return False
    if has_time and match is not None:
        rest = rest[match.end() :].lstrip(" ")
        if timestamp is not None:
            event["timestamp"] = timestamp
        # After a timestamp comes HOSTNAME, unless the sender skipped it and this is the TAG.
        host, sep, after = rest.partition(" ")
        if sep and host and not _TAG.match(rest):
            event["host"] = host
            rest = after
    tag = _TAG.match(rest)
    if tag is not None:
        event["service"] = tag.group(1)
        if tag.group(2):
            _procid(tag.group(2), event)
        rest = rest[tag.end() :]
    event["message"] = rest
    return True


def _rfc3339_ns(match: re.Match[str]) -> int | None:
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        return None
    seconds = calendar.timegm((int(year), int(month), int(day), int(hour), int(minute), int(second)))
    if not zulu:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


def _bsd_ns(match: re.Match[str], now: float | None) -> int | None:
    month_name, day, hour, minute, second, fraction = match.groups()
    month = _MONTHS.get(month_name)
    if month is None:
        return None
    current = time.time() if now is None else now
    year = datetime.fromtimestamp(current, UTC).year
    for candidate in (year, year - 1):
        try:
            stamp = datetime(candidate, month, int(day), int(hour), int(minute), int(second), tzinfo=UTC)
        except ValueError:
            continue  # 29 February in a common year, or a bad field
        if stamp.timestamp() <= current + 86400:
            nanos = int(fraction.ljust(9, "0")) if fraction else 0
            return calendar.timegm(stamp.timetuple()) * 1_000_000_000 + nanos
    return None

"""Signed acknowledge links: a capability a notification can carry, valid until it expires.

The token is ``base64url(payload) "." base64url(HMAC-SHA256(secret, payload))`` where the
payload is compact JSON ``{"i": incident id, "u": paged user, "e": expiry (Unix s), "a": "ack"}``.
Whoever holds an unexpired token may acknowledge that one incident and nothing else, without a
login: the person paged at 3 a.m. taps the link in the e-mail or chat message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LinkError", "LinkSigner", "load_or_create_secret"]


class LinkError(Exception):
    """The token is malformed, forged, or expired (the message says which)."""


@dataclass(frozen=True)
class AckClaim:
    incident_id: int
    user: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_secret(path: Path) -> bytes:
    """The server's signing key: read from ``path``, or generated (32 random bytes, mode 0600)."""
    if path.exists():
        data = path.read_bytes().strip()
        if data:
            return data
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32).encode()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(key)
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


class LinkSigner:
    def __init__(self, secret: bytes, ttl_s: float = 24 * 3600) -> None:
        if len(secret) < 16:
            raise ValueError("the link signing secret must be at least 16 bytes")
        self.secret = secret
        self.ttl_s = ttl_s

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.secret, b"stackwatch-ack\x00" + payload, hashlib.sha256).digest()

    def sign(self, incident_id: int, user: str, now: float) -> str:
        payload = json.dumps(
            {"i": incident_id, "u": user, "e": int(now + self.ttl_s), "a": "ack"}, separators=(",", ":")
        ).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str, now: float) -> AckClaim:
        body, dot, mac = token.partition(".")
        if not dot or not body or not mac:
            raise LinkError("this link is malformed")
        try:
            payload = _unb64(body)
            given = _unb64(mac)
        except (ValueError, TypeError):
            raise LinkError("this link is malformed") from None
        if not hmac.compare_digest(given, self._mac(payload)):
            raise LinkError("this link is not valid (it was altered, or signed by another server)")
        try:
            data = json.loads(payload)
            claim = AckClaim(int(data["i"]), str(data.get("u") or ""), int(data["e"]))
            if data.get("a") != "ack":
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise LinkError("this link is malformed") from None
        if claim.expires <= now:
            raise LinkError("this link has expired: acknowledge in Stackwatch or with `stackwatch incidents ack`")
        return claim

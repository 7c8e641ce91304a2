"""Request dependencies: the runtime, the caller's identity, and the request body.

Ingest accepts a project ingest token in every form shippers use: ``Authorization: Bearer``,
HTTP basic auth (token as password, as Filebeat/Vector/rsyslog send it; or as user name with an
empty password), ``Authorization: ApiKey`` (Elasticsearch clients), ``X-API-Key``, and the
``api_key`` query parameter for clients that cannot set headers. Reading takes an API token or a
browser session cookie.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from stackwatch.errors import NotFound, PayloadTooLarge, Unauthorized
from stackwatch.ingest._body import read_body
from stackwatch.server.runtime import Runtime

__all__ = ["SESSION_COOKIE", "body", "credential", "ingest_project", "principal", "runtime"]

SESSION_COOKIE = "stackwatch_session"


def runtime(request: Request) -> Runtime:
    return request.app.state.rt  # type: ignore[no-any-return]


def credential(request: Request) -> str | None:
    """The secret the caller presented, in whichever form its client uses."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme in ("bearer", "token"):
            return value or None
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise Unauthorized("malformed basic authorization header") from None
            user, _, password = decoded.partition(":")
            return password or user or None
        if scheme == "apikey":
            try:
                decoded = base64.b64decode(value, validate=True).decode()
                _, _, key = decoded.partition(":")
                return key or decoded
            except (ValueError, UnicodeDecodeError):
                return value or None
        raise Unauthorized(f"unsupported authorization scheme {scheme!r}: use Bearer or Basic")
    key = request.headers.get("x-api-key") or request.query_params.get("api_key")
    return key or None


def ingest_project(request: Request) -> Any:
    token = credential(request)
    if not token:
        raise Unauthorized("missing ingest token: send 'Authorization: Bearer <project ingest token>'")
    return runtime(request).auth.verify_ingest_token(token)


def principal(request: Request, role: str = "viewer") -> Any:
    rt = runtime(request)
    token = credential(request)
    if token:
        who = rt.auth.verify_api_token(token)
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise Unauthorized("missing API token: send 'Authorization: Bearer <API token>' or log in")
        who = rt.auth.verify_session(cookie)
    rt.auth.require(who, role)
    return who


async def _principal_async(request: Request, role: str) -> Any:
    """:func:`principal` on the event loop when the token is in the auth cache.

    A dependency declared with ``def`` runs in a worker thread; a token verified in the last
    few seconds needs no database, so only the first request of a token (and cookie
    sessions) still go to a thread, and an endpoint that answers on the event loop (a
    histogram from memory) makes no hop at all.
    """
    token = credential(request)
    if token:
        rt = runtime(request)
        who = rt.auth.cached_api_token(token)
        if who is not None:
            rt.auth.require(who, role)
            return who
    return await run_in_threadpool(principal, request, role)


async def viewer(request: Request) -> Any:
    return await _principal_async(request, "viewer")


async def editor(request: Request) -> Any:
    return await _principal_async(request, "editor")


async def admin(request: Request) -> Any:
    return await _principal_async(request, "admin")


async def body(request: Request) -> bytes:
    """The request body, decompressed, within the configured size limit."""
    rt = runtime(request)
    limit = rt.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return read_body(b"".join(chunks), request.headers.get("content-encoding"), limit)


def check_project(request: Request, slug: str) -> None:
    """Raise NotFound unless a project ``slug`` exists (known slugs are remembered)."""
    rt = runtime(request)
    # Remembered on the runtime: a search names its project on every request.
    known: set[str] | None = getattr(rt, "_project_slugs", None)
    if known is not None and slug in known:
        return
    known = {p.slug for p in rt.auth.list_projects()}
    rt._project_slugs = known
    if slug not in known:
        raise NotFound(f"no project {slug!r}")

"""Web UI routes: the login form, logout, the log explorer page, and the UI's static files.

The session lives in an HttpOnly, SameSite=Lax cookie (:data:`SESSION_COOKIE`), the same one
the JSON API accepts, so the page's script calls the API without ever seeing a secret.

``GET /`` is shared with the Elasticsearch-compatible API: log shippers probe ``GET /`` for a
cluster banner, browsers want the explorer. Only a request that accepts ``text/html`` gets the
page; every other one is answered by :func:`stackwatch.server.api.es.root_response`.

Every page is sent with a strict Content-Security-Policy (scripts and styles only from this
origin, no inline script) as a second line of defence behind escaping: a log line is data
written by whoever can reach an ingest endpoint, and it must never run in an operator's browser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from stackwatch import __version__
from stackwatch.errors import Forbidden, Unauthorized
from stackwatch.server.deps import SESSION_COOKIE, runtime

__all__ = ["router"]

_HERE = Path(__file__).parent
STATIC_DIR: Final = _HERE / "static"

router = APIRouter(include_in_schema=False)

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,  # every template is HTML; log text and user input must never be markup
    undefined=jinja2.StrictUndefined,  # a missing variable is a bug to see, not an empty string
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals["version"] = __version__
templates = Jinja2Templates(env=_env)

# check_dir=False: the vendor/ subdirectory is filled by `make assets` and may be missing in a
# bare checkout; the page must still load (it says the chart library is missing).
_static = StaticFiles(directory=STATIC_DIR, check_dir=False)

_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_DEFAULT_SESSION_SECONDS: Final = 7 * 86400


def _page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=_SECURITY_HEADERS
    )


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only, so a crafted link cannot send a
    freshly logged-in user to another origin (``//evil.example`` and ``/\\evil`` are such links)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(c in target for c in "\r\n\t"):
        return "/"
    return target


def _check_same_origin(request: Request) -> None:
    """Refuse a cross-site form post to /login or /logout.

    SameSite=Lax keeps the cookie off cross-site POSTs, but a cross-site *login* needs no cookie:
    it would log the victim into the attacker's account. Browsers send ``Origin`` on every POST,
    so comparing it with ``Host`` stops that; a client without ``Origin`` is not a browser.
    """
    origin = request.headers.get("origin")
    if not origin:
        return
    # Behind a reverse proxy that rewrites Host, the browser's host is in X-Forwarded-Host.
    hosts = {request.headers.get(h, "").lower() for h in ("host", "x-forwarded-host")} - {""}
    if urlsplit(origin).netloc.lower() not in hosts:
        raise Forbidden("cross-origin form post refused")


def _set_session_cookie(request: Request, response: Response, token: str) -> None:
    ttl = getattr(runtime(request).auth, "session_ttl", None)
    max_age = int(ttl.total_seconds()) if ttl is not None else _DEFAULT_SESSION_SECONDS
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


async def _current_user(request: Request) -> Any | None:
    """The principal of the request's session cookie, or None when there is no valid session."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return await run_in_threadpool(runtime(request).auth.verify_session, token)
    except Unauthorized:
        return None


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(
        "/login" if target == "/" else "/login?" + urlencode({"next": target}), status_code=303
    )
    if request.cookies.get(SESSION_COOKIE):
        response.delete_cookie(SESSION_COOKIE, path="/")  # stale or revoked: stop sending it
    return response


@router.get("/", response_model=None)
async def index(request: Request) -> Response:
    """The log explorer for browsers; the Elasticsearch banner for everyone else."""
    if "text/html" not in request.headers.get("accept", ""):
        from stackwatch.server.api.es import root_response

        return await root_response(request)
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    return _page(request, "explorer.html", {"user": who, "active": "logs"})


@router.get("/login", response_model=None)
async def login_form(request: Request, next: str | None = None) -> Response:
    if await _current_user(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _page(
        request, "login.html", {"error": None, "email": "", "next": _safe_next(next), "mode": "password"}
    )


@router.post("/login", response_model=None)
async def login(request: Request) -> Response:
    """Log in with email and password, or with an API token (for automation and first use).

    A token login opens an ordinary session for the token's user, so the browser holds a
    session cookie that logout ends, never the long-lived API token itself.
    """
    _check_same_origin(request)
    form = await request.form()
    email = str(form.get("email") or "").strip()
    password = str(form.get("password") or "")
    api_token = str(form.get("token") or "").strip()
    target = _safe_next(str(form.get("next") or "/"))
    auth = runtime(request).auth
    try:
        if api_token:
            who = await run_in_threadpool(auth.verify_api_token, api_token)
            session = await run_in_threadpool(auth.create_session, who.user_id)
        elif email and password:
            session = await run_in_threadpool(auth.login, email, password)
        else:
            raise Unauthorized("enter your email and password, or an API token")
    except Unauthorized as exc:
        context = {
            "error": exc.message,
            "email": email,
            "next": target,
            "mode": "token" if api_token else "password",
        }
        return _page(request, "login.html", context, status_code=401)
    response = RedirectResponse(target, status_code=303)
    _set_session_cookie(request, response, session)
    return response


@router.post("/logout", response_model=None)
async def logout(request: Request) -> Response:
    _check_same_origin(request)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await run_in_threadpool(runtime(request).auth.logout, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/ui/static/{path:path}", response_model=None)
async def static(request: Request, path: str) -> Response:
    """The UI's own CSS/JS and the vendored libraries (public: they hold no data).

    Pages link assets with ``?v=<version>``, so a versioned URL may be cached for a day and an
    upgrade still reaches every browser; an unversioned one is revalidated by ETag each time.
    """
    response = await _static.get_response(path, request.scope)
    versioned = request.query_params.get("v") == __version__
    response.headers["Cache-Control"] = "public, max-age=86400" if versioned else "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response

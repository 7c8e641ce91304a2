"""The UI's HTTP contract: login, logout, the session cookie, `GET /` sharing, static files.

These drive the real app (``create_app``) with a real :class:`AuthService` on a SQLite meta
store; only the telemetry side of the runtime is left out, since these pages never touch it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from stackwatch import __version__
from stackwatch.auth import AuthService
from stackwatch.errors import Unauthorized
from stackwatch.server.app import create_app
from stackwatch.server.deps import SESSION_COOKIE
from stackwatch.storage.meta import MetaStore

EMAIL = "ops@example.com"
PASSWORD = "correct horse battery"
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
SAME_ORIGIN = {"Origin": "http://testserver"}


@pytest.fixture
def auth(tmp_path: Path) -> Iterator[AuthService]:
    store = MetaStore(f"sqlite:///{tmp_path / 'meta.db'}")
    store.migrate()
    service = AuthService(store)
    service.bootstrap()
    service.create_user(EMAIL, PASSWORD, "viewer")
    yield service
    store.engine.dispose()


@pytest.fixture
def client(auth: AuthService) -> TestClient:
    runtime = SimpleNamespace(auth=auth, settings=SimpleNamespace())
    return TestClient(create_app(None, runtime=runtime), follow_redirects=False)  # type: ignore[arg-type]


def log_in(client: TestClient, **fields: str) -> object:
    return client.post("/login", data=fields or {"email": EMAIL, "password": PASSWORD}, headers=SAME_ORIGIN)


def test_root_redirects_a_browser_without_session_to_login(client: TestClient) -> None:
    response = client.get("/", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == "/login"


def test_deep_link_survives_the_login_redirect(client: TestClient) -> None:
    response = client.get("/?q=level%3AERROR&start=-6h", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2F%3Fq%3Dlevel%253AERROR%26start%3D-6h"


def test_login_page_is_a_form_with_a_strict_csp(client: TestClient) -> None:
    response = client.get("/login")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'name="email"' in response.text and 'name="password"' in response.text
    assert 'name="token"' in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"


def test_password_login_sets_an_httponly_lax_cookie_and_opens_the_explorer(
    client: TestClient, auth: AuthService
) -> None:
    response = log_in(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    token = client.cookies[SESSION_COOKIE]
    assert auth.verify_session(token).email == EMAIL

    page = client.get("/", headers=HTML)
    assert page.status_code == 200
    assert EMAIL in page.text
    assert 'id="q"' in page.text and 'id="histogram"' in page.text
    assert "/ui/static/explorer.js" in page.text


def test_wrong_password_rerenders_the_form_with_the_message(client: TestClient) -> None:
    response = log_in(client, email=EMAIL, password="not the password")
    assert response.status_code == 401
    assert "invalid email or password" in response.text
    assert "set-cookie" not in response.headers
    assert f'value="{EMAIL}"' in response.text  # the email is kept, the password is not


def test_user_input_echoed_on_the_login_page_is_escaped(client: TestClient) -> None:
    response = log_in(client, email='"><script>alert(1)</script>', password="whatever1")
    assert response.status_code == 401
    assert "<script>alert(1)" not in response.text
    assert "&lt;script&gt;alert(1)" in response.text


def test_login_goes_back_to_a_local_next_but_never_off_site(client: TestClient) -> None:
    local = log_in(client, email=EMAIL, password=PASSWORD, next="/?q=service%3Aapi")
    assert local.headers["location"] == "/?q=service%3Aapi"
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        client.cookies.clear()
        response = log_in(client, email=EMAIL, password=PASSWORD, next=evil)
        assert response.headers["location"] == "/", evil


def test_cross_origin_login_post_is_refused(client: TestClient) -> None:
    response = client.post(
        "/login", data={"email": EMAIL, "password": PASSWORD}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")


def test_token_login_opens_a_session_for_the_tokens_user(client: TestClient, auth: AuthService) -> None:
    if not hasattr(auth, "create_session"):
        pytest.fail("AuthService.create_session(user_id) -> session token is needed for token login")
    user = next(u for u in auth.list_users() if u.email == EMAIL)
    issued = auth.create_api_token(user.id, "ui test", "viewer")
    response = log_in(client, token=issued.token)
    assert response.status_code == 303
    session = client.cookies[SESSION_COOKIE]
    assert session != issued.token  # the browser holds a session, never the API token
    assert auth.verify_session(session).email == EMAIL


def test_bad_token_login_says_why(client: TestClient) -> None:
    response = log_in(client, token="swa_not-a-real-token")
    assert response.status_code == 401
    assert "unknown or revoked token" in response.text
    assert "set-cookie" not in response.headers


def test_logout_ends_the_session(client: TestClient, auth: AuthService) -> None:
    log_in(client)
    token = client.cookies[SESSION_COOKIE]
    response = client.post("/logout", headers=SAME_ORIGIN)
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert f'{SESSION_COOKIE}=""' in response.headers["set-cookie"]
    with pytest.raises(Unauthorized):
        auth.verify_session(token)
    assert client.get("/", headers=HTML).status_code == 303


def test_a_stale_cookie_is_cleared_on_redirect(client: TestClient) -> None:
    client.cookies.set(SESSION_COOKIE, "sws_revoked")
    response = client.get("/", headers=HTML)
    assert response.status_code == 303
    assert f'{SESSION_COOKIE}=""' in response.headers["set-cookie"]


def test_root_answers_log_shippers_as_elasticsearch(client: TestClient, auth: AuthService) -> None:
    ingest = auth.create_ingest_token(auth.list_projects()[0].id, "shipper")
    response = client.get("/", headers={"Accept": "*/*", "Authorization": f"Bearer {ingest.token}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json(), dict)


def test_static_files_are_served_and_cannot_escape_their_directory(client: TestClient) -> None:
    css = client.get("/ui/static/app.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["cache-control"] == "no-cache"
    js = client.get(f"/ui/static/explorer.js?v={__version__}")
    assert js.status_code == 200
    assert "max-age" in js.headers["cache-control"]
    assert client.get("/ui/static/../routes.py").status_code == 404
    assert client.get("/ui/static/%2e%2e/routes.py").status_code == 404
    assert client.get("/ui/static/no-such-file.js").status_code == 404

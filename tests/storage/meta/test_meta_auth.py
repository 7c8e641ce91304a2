"""AuthService against a real meta store (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher, profiles
from fake_clocks import Clocks

from stackwatch.auth import (
    ADMIN_EMAIL,
    AuthService,
    Principal,
    ProjectRef,
    hash_token,
    validate_retention,
)
from stackwatch.errors import BadRequest, ConfigError, Forbidden, NotFound, Unauthorized
from stackwatch.storage.meta import DEFAULT_RETENTION, MetaStore
from stackwatch.storage.meta.models import ApiToken, IngestToken, LoginSession, User

ADMIN_TOKEN = "automation-admin-token-0123456789"
INGEST_TOKEN = "automation-ingest-token-0123456789"


def _service(store: MetaStore, clocks: Clocks, **kwargs: object) -> AuthService:
    return AuthService(
        store,
        # The cheapest argon2 parameters keep the tests fast; production uses the default.
        password_hasher=PasswordHasher.from_parameters(profiles.CHEAPEST),
        now=clocks.now,
        monotonic=clocks.monotonic,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def auth(meta_store: MetaStore, clocks: Clocks) -> AuthService:
    return _service(meta_store, clocks)


def _count(store: MetaStore, model: type) -> int:
    with store.session() as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


# -- bootstrap ----------------------------------------------------------------------------


def test_first_bootstrap_generates_working_credentials(auth: AuthService) -> None:
    result = auth.bootstrap(None, None)
    assert result.generated
    assert result.project.slug == "default"
    assert result.admin_email == ADMIN_EMAIL
    assert result.admin_password and result.admin_token and result.ingest_token
    assert result.admin_token.startswith("swa_") and result.ingest_token.startswith("swi_")
    assert auth.verify_api_token(result.admin_token).role == "admin"
    assert auth.verify_ingest_token(result.ingest_token) == result.project
    assert auth.verify_session(auth.login(ADMIN_EMAIL, result.admin_password)).role == "admin"
    # The generated ingest token is the default project's DSN key.
    assert auth.dsn_public_key(result.project.id) == result.ingest_token


def test_later_bootstraps_regenerate_nothing(auth: AuthService, meta_store: MetaStore) -> None:
    first = auth.bootstrap(None, None)
    again = auth.bootstrap(None, None)
    assert not again.generated
    assert again.project == first.project
    assert (again.added, again.warnings) == ((), ())
    assert [_count(meta_store, model) for model in (User, ApiToken, IngestToken)] == [1, 1, 1]
    assert first.admin_token is not None
    assert auth.verify_api_token(first.admin_token).email == ADMIN_EMAIL


def test_bootstrap_uses_the_operators_tokens(auth: AuthService) -> None:
    result = auth.bootstrap(ADMIN_TOKEN, INGEST_TOKEN)
    assert result.admin_password is not None
    assert (result.admin_token, result.ingest_token) == (None, None)
    assert set(result.added) == {"STACKWATCH_ADMIN_TOKEN", "STACKWATCH_INGEST_TOKEN"}
    assert auth.verify_api_token(ADMIN_TOKEN) == Principal(1, ADMIN_EMAIL, "admin")
    assert auth.verify_ingest_token(INGEST_TOKEN) == result.project
    assert auth.dsn_public_key(result.project.id) == INGEST_TOKEN
    again = auth.bootstrap(ADMIN_TOKEN, INGEST_TOKEN)
    assert not again.generated and again.added == ()


def test_bootstrap_adds_changed_operator_tokens_and_keeps_old_ones(auth: AuthService) -> None:
    first = auth.bootstrap(None, None)
    assert first.admin_token and first.ingest_token
    later = auth.bootstrap(ADMIN_TOKEN, INGEST_TOKEN)
    assert not later.generated
    assert set(later.added) == {"STACKWATCH_ADMIN_TOKEN", "STACKWATCH_INGEST_TOKEN"}
    for token in (first.admin_token, ADMIN_TOKEN):
        assert auth.verify_api_token(token).role == "admin"
    for token in (first.ingest_token, INGEST_TOKEN):
        assert auth.verify_ingest_token(token) == first.project
    # The operator's token is what apps are configured with, so it becomes the DSN key.
    assert auth.dsn_public_key(first.project.id) == INGEST_TOKEN


def test_bootstrap_warns_about_a_revoked_operator_token(auth: AuthService) -> None:
    auth.bootstrap(ADMIN_TOKEN, INGEST_TOKEN)
    (admin_token,) = auth.list_api_tokens(1)
    auth.revoke_api_token(admin_token.id)
    result = auth.bootstrap(ADMIN_TOKEN, INGEST_TOKEN)
    assert result.added == ()
    assert any("STACKWATCH_ADMIN_TOKEN was revoked" in w for w in result.warnings)
    with pytest.raises(Unauthorized):
        auth.verify_api_token(ADMIN_TOKEN)


@pytest.mark.parametrize(
    "token", ["short", "has space in it 0123456789", "x" * 257, "tok/with/slash/0123456"]
)
def test_bootstrap_refuses_weak_or_unsafe_operator_tokens(auth: AuthService, token: str) -> None:
    with pytest.raises(ConfigError, match="STACKWATCH_INGEST_TOKEN"):
        auth.bootstrap(None, token)
    with pytest.raises(ConfigError, match="STACKWATCH_ADMIN_TOKEN"):
        auth.bootstrap(token, None)
    assert auth.list_projects() == []  # nothing half-done


def test_bootstrap_creates_no_admin_when_one_exists(auth: AuthService) -> None:
    auth.create_user("Boss@Example.com", "correct horse", "admin")
    result = auth.bootstrap(None, None)
    assert result.admin_password is None and result.admin_token is None
    assert result.admin_email == "boss@example.com"
    assert [u.email for u in auth.list_users()] == ["boss@example.com"]


# -- ingest tokens -------------------------------------------------------------------------


def test_ingest_token_errors_say_what_is_wrong(auth: AuthService) -> None:
    auth.bootstrap(None, INGEST_TOKEN)
    with pytest.raises(Unauthorized, match="missing token"):
        auth.verify_ingest_token(None)
    with pytest.raises(Unauthorized, match="missing token"):
        auth.verify_ingest_token("")
    with pytest.raises(Unauthorized, match="unknown or revoked token"):
        auth.verify_ingest_token("swi_not-a-real-token")
    with pytest.raises(Unauthorized, match="unknown or revoked token"):
        auth.verify_ingest_token("x" * 10_000)


def test_ingest_verification_is_served_from_the_cache(
    auth: AuthService, meta_store: MetaStore, clocks: Clocks
) -> None:
    ref = auth.bootstrap(None, INGEST_TOKEN).project
    assert auth.verify_ingest_token(INGEST_TOKEN) == ref
    statements: list[str] = []
    sa.event.listen(meta_store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(100):
        assert auth.verify_ingest_token(INGEST_TOKEN) == ref
    assert statements == []
    clocks.advance(auth.ingest_cache_ttl + 1)
    auth.verify_ingest_token(INGEST_TOKEN)
    assert len([q for q in statements if "ingest_tokens" in q]) == 1


def test_a_revocation_elsewhere_takes_effect_within_the_ttl(
    auth: AuthService, meta_store: MetaStore, clocks: Clocks
) -> None:
    auth.bootstrap(None, INGEST_TOKEN)
    auth.verify_ingest_token(INGEST_TOKEN)
    other_replica = _service(meta_store, clocks)
    (token,) = other_replica.list_ingest_tokens(1)
    other_replica.revoke_ingest_token(token.id)
    with pytest.raises(Unauthorized):
        other_replica.verify_ingest_token(INGEST_TOKEN)  # the revoking process: at once
    clocks.advance(auth.ingest_cache_ttl - 1)
    auth.verify_ingest_token(INGEST_TOKEN)  # still cached here: the documented window
    clocks.advance(2)
    with pytest.raises(Unauthorized, match="unknown or revoked token"):
        auth.verify_ingest_token(INGEST_TOKEN)
    assert auth.dsn_public_key(1) is None  # a revoked token is no longer shown as the DSN key


def test_unknown_tokens_are_cached_briefly(auth: AuthService, meta_store: MetaStore, clocks: Clocks) -> None:
    auth.bootstrap(None, None)
    with pytest.raises(Unauthorized):
        auth.verify_ingest_token(INGEST_TOKEN)
    # Another replica adds the token (the operator set STACKWATCH_INGEST_TOKEN and restarted it).
    _service(meta_store, clocks).bootstrap(None, INGEST_TOKEN)
    with pytest.raises(Unauthorized):
        auth.verify_ingest_token(INGEST_TOKEN)
    clocks.advance(auth.ingest_negative_ttl + 0.1)
    assert auth.verify_ingest_token(INGEST_TOKEN).slug == "default"


def test_tokens_created_here_work_at_once_despite_a_negative_cache_entry(auth: AuthService) -> None:
    auth.bootstrap(None, None)
    with pytest.raises(Unauthorized):
        auth.verify_ingest_token(INGEST_TOKEN)
    auth.bootstrap(None, INGEST_TOKEN)
    assert auth.verify_ingest_token(INGEST_TOKEN).slug == "default"


def test_the_ingest_cache_is_bounded(meta_store: MetaStore, clocks: Clocks) -> None:
    auth = _service(meta_store, clocks, ingest_cache_size=50)
    ref = auth.bootstrap(None, INGEST_TOKEN).project
    auth.verify_ingest_token(INGEST_TOKEN)
    for i in range(500):
        with pytest.raises(Unauthorized):
            auth.verify_ingest_token(f"swi_scanner-{i}")
        assert len(auth._ingest_cache) <= 50
    # Pruning drops unknown tokens before known ones.
    assert auth._ingest_cache[hash_token(INGEST_TOKEN)][1] == ref


def test_each_project_has_its_own_ingest_token(auth: AuthService) -> None:
    auth.bootstrap(None, None)
    project, token = auth.create_project("shop", "Shop")
    assert auth.verify_ingest_token(token) == ProjectRef(project.id, "shop")
    assert auth.dsn_public_key(project.id) == token
    extra = auth.create_ingest_token(project.id, "ci")
    assert auth.verify_ingest_token(extra.token) == ProjectRef(project.id, "shop")
    assert auth.dsn_public_key(project.id) == token  # not a DSN key unless asked
    assert [t.name for t in auth.list_ingest_tokens(project.id)] == ["default", "ci"]
    assert all(t.public_key is None for t in auth.list_ingest_tokens(project.id) if t.name == "ci")
    with pytest.raises(NotFound):
        auth.create_ingest_token(999, "x")


def test_tokens_are_stored_hashed(auth: AuthService, meta_store: MetaStore) -> None:
    result = auth.bootstrap(None, None)
    user = auth.create_user("u@example.com", "password1", "viewer")
    issued = auth.create_api_token(user.id, "laptop", "viewer")
    session = auth.login("u@example.com", "password1")
    with meta_store.session() as s:
        api = s.scalar(sa.select(ApiToken).where(ApiToken.id == issued.id))
        login = s.scalar(sa.select(LoginSession))
        stored_user = s.get(User, user.id)
    assert api is not None and login is not None and stored_user is not None
    assert api.token_hash == hash_token(issued.token) and issued.token not in api.prefix
    assert api.prefix == issued.token[:8] == issued.prefix
    assert login.id == hash_token(session)
    assert stored_user.password_hash.startswith("$argon2id$")
    assert result.admin_password is not None


# -- users, API tokens, sessions ----------------------------------------------------------


def test_api_token_errors_say_what_is_wrong(auth: AuthService, clocks: Clocks) -> None:
    user = auth.create_user("dev@example.com", "password1", "editor")
    with pytest.raises(Unauthorized, match="missing token"):
        auth.verify_api_token(None)
    with pytest.raises(Unauthorized, match="unknown or revoked token"):
        auth.verify_api_token("swa_nope")
    expiring = auth.create_api_token(user.id, "short-lived", "viewer", expires_in=timedelta(hours=1))
    assert auth.verify_api_token(expiring.token).role == "viewer"
    clocks.advance(3601)
    with pytest.raises(Unauthorized, match="expired token"):
        auth.verify_api_token(expiring.token)
    revoked = auth.create_api_token(user.id, "old", "editor")
    auth.revoke_api_token(revoked.id, user_id=user.id)
    with pytest.raises(Unauthorized, match="unknown or revoked token"):
        auth.verify_api_token(revoked.token)


def test_api_token_role_is_capped_by_the_users_current_role(auth: AuthService, meta_store: MetaStore) -> None:
    user = auth.create_user("dev@example.com", "password1", "editor")
    with pytest.raises(Forbidden, match="more than its user's role"):
        auth.create_api_token(user.id, "too strong", "admin")
    with pytest.raises(BadRequest, match="unknown role"):
        auth.create_api_token(user.id, "bad", "root")
    with pytest.raises(NotFound):
        auth.create_api_token(999, "nobody", "viewer")
    issued = auth.create_api_token(user.id, "ci", "editor")
    assert auth.verify_api_token(issued.token) == Principal(user.id, "dev@example.com", "editor")
    with meta_store.session() as s:
        s.execute(sa.update(User).where(User.id == user.id).values(role="viewer"))
    assert auth.verify_api_token(issued.token).role == "viewer"
    with meta_store.session() as s:
        s.execute(sa.update(User).where(User.id == user.id).values(disabled=True))
    with pytest.raises(Unauthorized, match="user disabled"):
        auth.verify_api_token(issued.token)


def test_api_token_last_used_is_recorded_at_minute_precision(auth: AuthService, clocks: Clocks) -> None:
    user = auth.create_user("dev@example.com", "password1", "viewer")
    issued = auth.create_api_token(user.id, "ci", "viewer")
    assert auth.list_api_tokens(user.id)[0].last_used_at is None
    start = clocks.wall
    auth.verify_api_token(issued.token)
    clocks.advance(30)
    auth.verify_api_token(issued.token)
    assert auth.list_api_tokens(user.id)[0].last_used_at == start
    clocks.advance(31)
    auth.verify_api_token(issued.token)
    assert auth.list_api_tokens(user.id)[0].last_used_at == clocks.wall


def test_revoking_someone_elses_api_token_is_not_found(auth: AuthService) -> None:
    alice = auth.create_user("alice@example.com", "password1", "viewer")
    bob = auth.create_user("bob@example.com", "password1", "viewer")
    issued = auth.create_api_token(alice.id, "a", "viewer")
    with pytest.raises(NotFound):
        auth.revoke_api_token(issued.id, user_id=bob.id)
    with pytest.raises(NotFound):
        auth.revoke_api_token(12345)
    assert auth.verify_api_token(issued.token).email == "alice@example.com"


def test_login_session_lifecycle(auth: AuthService, clocks: Clocks) -> None:
    user = auth.create_user("Ann@Example.com", "s3cret-pass", "editor", name="Ann")
    token = auth.login("  ann@EXAMPLE.com ", "s3cret-pass")
    assert token.startswith("sws_")
    assert auth.verify_session(token) == Principal(user.id, "ann@example.com", "editor")
    auth.logout(token)
    with pytest.raises(Unauthorized, match="unknown session"):
        auth.verify_session(token)
    auth.logout(token)  # twice is fine
    auth.logout(None)
    with pytest.raises(Unauthorized, match="missing session"):
        auth.verify_session("")


def test_sessions_expire(auth: AuthService, meta_store: MetaStore, clocks: Clocks) -> None:
    auth.create_user("ann@example.com", "s3cret-pass", "viewer")
    token = auth.login("ann@example.com", "s3cret-pass")
    clocks.advance(auth.session_ttl.total_seconds() - 1)
    auth.verify_session(token)
    clocks.advance(2)
    with pytest.raises(Unauthorized, match="expired session"):
        auth.verify_session(token)
    assert _count(meta_store, LoginSession) == 0  # the expired row was removed


def test_login_failures_do_not_reveal_which_emails_exist(auth: AuthService, meta_store: MetaStore) -> None:
    auth.create_user("ann@example.com", "s3cret-pass", "viewer")
    with pytest.raises(Unauthorized) as wrong_password:
        auth.login("ann@example.com", "wrong-pass")
    with pytest.raises(Unauthorized) as unknown_email:
        auth.login("nobody@example.com", "wrong-pass")
    assert wrong_password.value.message == unknown_email.value.message == "invalid email or password"
    with meta_store.session() as s:
        s.execute(sa.update(User).values(disabled=True))
    with pytest.raises(Unauthorized, match="user disabled"):
        auth.login("ann@example.com", "s3cret-pass")


def test_a_disabled_users_sessions_stop_working(auth: AuthService, meta_store: MetaStore) -> None:
    auth.create_user("ann@example.com", "s3cret-pass", "viewer")
    token = auth.login("ann@example.com", "s3cret-pass")
    with meta_store.session() as s:
        s.execute(sa.update(User).values(disabled=True))
    with pytest.raises(Unauthorized, match="user disabled"):
        auth.verify_session(token)


def test_weak_password_hashes_are_upgraded_at_login(meta_store: MetaStore, clocks: Clocks) -> None:
    cheap = _service(meta_store, clocks)
    cheap.create_user("ann@example.com", "s3cret-pass", "viewer")
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    strong = AuthService(meta_store, password_hasher=stronger, now=clocks.now)
    strong.login("ann@example.com", "s3cret-pass")
    (user,) = strong.list_users()
    assert not stronger.check_needs_rehash(user.password_hash)
    assert strong.verify_session(strong.login("ann@example.com", "s3cret-pass")).user_id == user.id


def test_create_user_validates_its_input(auth: AuthService) -> None:
    auth.create_user("ann@example.com", "s3cret-pass", "viewer")
    with pytest.raises(BadRequest, match="already exists"):
        auth.create_user("ANN@example.com", "s3cret-pass", "viewer")
    with pytest.raises(BadRequest, match="at least 8"):
        auth.create_user("bob@example.com", "short", "viewer")
    with pytest.raises(BadRequest, match="unknown role"):
        auth.create_user("bob@example.com", "s3cret-pass", "owner")
    with pytest.raises(BadRequest, match="invalid email"):
        auth.create_user("bob", "s3cret-pass", "viewer")
    assert [u.email for u in auth.list_users()] == ["ann@example.com"]


@pytest.mark.parametrize(
    ("have", "need", "allowed"),
    [
        ("viewer", "viewer", True),
        ("viewer", "editor", False),
        ("editor", "editor", True),
        ("editor", "admin", False),
        ("admin", "viewer", True),
        ("admin", "admin", True),
    ],
)
def test_require_orders_roles(have: str, need: str, allowed: bool) -> None:
    principal = Principal(1, "p@example.com", have)
    if allowed:
        AuthService.require(principal, need)
    else:
        with pytest.raises(Forbidden, match=f"needs the {need} role"):
            AuthService.require(principal, need)


# -- projects -------------------------------------------------------------------------------


def test_projects(auth: AuthService) -> None:
    auth.bootstrap(None, None)
    shop, _ = auth.create_project("shop", "  Shop  ")
    assert [(p.slug, p.name) for p in auth.list_projects()] == [("default", "Default"), ("shop", "Shop")]
    assert auth.get_project(shop.id).slug == "shop"
    with pytest.raises(BadRequest, match="already exists"):
        auth.create_project("shop", "Again")
    for slug in ("", "Shop", "-x", "a b", "x" * 64):
        with pytest.raises(BadRequest, match="invalid project slug"):
            auth.create_project(slug, "X")
    with pytest.raises(BadRequest, match="name"):
        auth.create_project("ok", " ")
    with pytest.raises(NotFound):
        auth.get_project(999)


# -- retention ------------------------------------------------------------------------------


def test_retention_defaults_and_overrides(auth: AuthService) -> None:
    project_id = auth.bootstrap(None, None).project.id
    assert auth.get_retention(project_id) == {k: dict(v) for k, v in DEFAULT_RETENTION.items()}
    assert auth.get_retention(project_id)["application"] == {"hot_days": 7, "warm_days": 30, "cold_days": 365}
    merged = auth.set_retention(project_id, {"web": {"hot_days": 1}, "security": {"cold_days": 3650}})
    assert merged["web"] == {"hot_days": 1, "warm_days": 15, "cold_days": 90}
    assert merged["security"]["cold_days"] == 3650
    assert auth.get_retention(project_id) == merged
    # Only the overrides are stored, so untouched values follow the defaults.
    assert auth.get_project(project_id).retention == {"web": {"hot_days": 1}, "security": {"cold_days": 3650}}
    auth.set_retention(project_id, None)
    assert auth.get_project(project_id).retention is None
    with pytest.raises(NotFound):
        auth.get_retention(999)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"web": {"hot_days": 0}}, "retention.web.hot_days must be a positive integer, got 0"),
        ({"web": {"hot_days": -3}}, "retention.web.hot_days must be a positive integer"),
        ({"web": {"warm_days": 1.5}}, "retention.web.warm_days must be a positive integer"),
        ({"web": {"cold_days": True}}, "retention.web.cold_days must be a positive integer"),
        ({"web": {"cold_days": "90"}}, "retention.web.cold_days must be a positive integer"),
        ({"web": {"hot_days": 20}}, r"retention.web: hot_days \(20\) must be <= warm_days \(15\)"),
        (
            {"database": {"cold_days": 10}},
            r"retention.database: warm_days \(30\) must be <= cold_days \(10\)",
        ),
        ({"audit": {"hot_days": 1}}, "retention.audit: unknown log type"),
        ({"web": {"hot": 1}}, "retention.web.hot: unknown key"),
        ({"web": 5}, "retention.web must be an object"),
        ([1, 2], "retention must be an object"),
    ],
)
def test_invalid_retention_names_the_key(auth: AuthService, overrides: object, message: str) -> None:
    project_id = auth.bootstrap(None, None).project.id
    with pytest.raises(BadRequest, match=message):
        auth.set_retention(project_id, overrides)  # type: ignore[arg-type]
    assert auth.get_project(project_id).retention is None


def test_validate_retention_keeps_only_given_keys() -> None:
    assert validate_retention({"web": {"cold_days": 30}, "system": {}}) == {"web": {"cold_days": 30}}


def test_metrics_retention_is_days_per_project(auth: AuthService) -> None:
    project_id = auth.bootstrap(None, None).project.id
    assert auth.metrics_retention_days(project_id, 15) == 15
    merged = auth.set_retention(project_id, {"metrics": {"days": 400}, "web": {"cold_days": 30}})
    assert "metrics" not in merged and merged["web"]["cold_days"] == 30  # log tiers unchanged in shape
    assert auth.metrics_retention_days(project_id, 15) == 400
    for bad, message in [({"metrics": {"days": 0}}, "positive integer"), ({"metrics": {"days": True}}, "positive"),
                         ({"metrics": 30}, r'\{"days": N\}'), ({"metrics": {"hot_days": 3}}, "days")]:
        with pytest.raises(BadRequest, match=message):
            auth.set_retention(project_id, bad)
    assert auth.metrics_retention_days(project_id, 15) == 400


def test_default_retention_is_read_only() -> None:
    with pytest.raises(TypeError):
        DEFAULT_RETENTION["web"]["hot_days"] = 1  # type: ignore[index]


# -- saved searches ------------------------------------------------------------------------


def test_saved_search_crud(auth: AuthService, clocks: Clocks) -> None:
    project_id = auth.bootstrap(None, None).project.id
    owner = auth.create_user("ann@example.com", "s3cret-pass", "editor")
    query = 'level:ERROR AND service:auth AND message:"Failed login attempt"'
    created = auth.create_saved_search(project_id, owner.id, "Failed logins", query, "24h")
    auth.create_saved_search(project_id, None, "All errors", "level:ERROR")
    assert [s.name for s in auth.list_saved_searches(project_id)] == ["All errors", "Failed logins"]
    assert auth.get_saved_search(project_id, created.id).query == query
    clocks.advance(60)
    updated = auth.update_saved_search(project_id, created.id, time_range="7d")
    assert (updated.name, updated.query, updated.time_range) == ("Failed logins", query, "7d")
    assert updated.updated_at - updated.created_at == timedelta(seconds=60)
    auth.delete_saved_search(project_id, created.id)
    assert [s.name for s in auth.list_saved_searches(project_id)] == ["All errors"]
    with pytest.raises(NotFound):
        auth.delete_saved_search(project_id, created.id)
    with pytest.raises(NotFound):
        auth.update_saved_search(project_id, created.id, name="x")
    with pytest.raises(NotFound):
        auth.get_saved_search(project_id, created.id)


def test_saved_searches_are_scoped_to_their_project(auth: AuthService) -> None:
    default_id = auth.bootstrap(None, None).project.id
    shop, _ = auth.create_project("shop", "Shop")
    search = auth.create_saved_search(shop.id, None, "Slow", "service:api AND context.duration:>500")
    assert auth.list_saved_searches(default_id) == []
    for call in (
        lambda: auth.get_saved_search(default_id, search.id),
        lambda: auth.update_saved_search(default_id, search.id, name="mine now"),
        lambda: auth.delete_saved_search(default_id, search.id),
    ):
        with pytest.raises(NotFound):
            call()
    assert auth.get_saved_search(shop.id, search.id).name == "Slow"
    with pytest.raises(NotFound):
        auth.create_saved_search(999, None, "x", "y")
    with pytest.raises(BadRequest, match="name"):
        auth.create_saved_search(shop.id, None, " ", "y")


def test_saved_searches_outlive_their_owner(auth: AuthService, meta_store: MetaStore) -> None:
    project_id = auth.bootstrap(None, None).project.id
    owner = auth.create_user("leaver@example.com", "s3cret-pass", "editor")
    search = auth.create_saved_search(project_id, owner.id, "Mine", "level:WARN")
    with meta_store.session() as s:
        s.execute(sa.delete(User).where(User.id == owner.id))
    kept = auth.get_saved_search(project_id, search.id)
    assert kept.owner_id is None

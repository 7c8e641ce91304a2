"""API tokens answered from memory: what the cache saves, and what still takes effect at once."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher, profiles
from fake_clocks import Clocks

from stackwatch.auth import AuthService, Principal
from stackwatch.errors import Unauthorized
from stackwatch.storage.meta import MetaStore
from stackwatch.storage.meta.models import User

TTL = 5.0


class CountingStore:
    """The meta store, counting the sessions opened: each is a database round trip."""

    def __init__(self, store: MetaStore) -> None:
        self.store = store
        self.sessions = 0

    def session(self):  # type: ignore[no-untyped-def]
        self.sessions += 1
        return self.store.session()

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


@pytest.fixture
def counting(meta_store: MetaStore) -> CountingStore:
    return CountingStore(meta_store)


def service(store: object, clocks: Clocks, ttl: float) -> AuthService:
    return AuthService(
        store,  # type: ignore[arg-type]
        password_hasher=PasswordHasher.from_parameters(profiles.CHEAPEST),
        api_token_cache_ttl=ttl,
        now=clocks.now,
        monotonic=clocks.monotonic,
    )


def test_a_verified_token_is_answered_from_memory_within_the_ttl(counting: CountingStore, clocks: Clocks) -> None:
    auth = service(counting, clocks, TTL)
    user = auth.create_user("dev@example.com", "password1", "editor")
    issued = auth.create_api_token(user.id, "ci", "editor")
    counting.sessions = 0
    who = auth.verify_api_token(issued.token)
    assert who == Principal(user.id, "dev@example.com", "editor")
    for _ in range(50):
        assert auth.verify_api_token(issued.token) == who
    assert counting.sessions == 1
    clocks.advance(TTL + 0.1)
    assert auth.verify_api_token(issued.token) == who
    assert counting.sessions == 2


def test_without_a_ttl_every_call_reads_the_database(counting: CountingStore, clocks: Clocks) -> None:
    auth = service(counting, clocks, 0)
    user = auth.create_user("dev@example.com", "password1", "viewer")
    issued = auth.create_api_token(user.id, "ci", "viewer")
    counting.sessions = 0
    for _ in range(3):
        auth.verify_api_token(issued.token)
    assert counting.sessions == 3


def test_revoking_through_the_service_acts_at_once(meta_store: MetaStore, clocks: Clocks) -> None:
    auth = service(meta_store, clocks, TTL)
    user = auth.create_user("dev@example.com", "password1", "viewer")
    issued = auth.create_api_token(user.id, "ci", "viewer")
    auth.verify_api_token(issued.token)
    auth.revoke_api_token(issued.id)
    with pytest.raises(Unauthorized, match="unknown or revoked token"):
        auth.verify_api_token(issued.token)


def test_a_cached_token_still_expires_on_time(meta_store: MetaStore, clocks: Clocks) -> None:
    auth = service(meta_store, clocks, 3600)
    user = auth.create_user("dev@example.com", "password1", "viewer")
    issued = auth.create_api_token(user.id, "short", "viewer", expires_in=timedelta(seconds=10))
    auth.verify_api_token(issued.token)
    clocks.advance(11)  # well within the cache TTL
    with pytest.raises(Unauthorized, match="expired token"):
        auth.verify_api_token(issued.token)


def test_a_change_made_in_the_database_acts_within_the_ttl(meta_store: MetaStore, clocks: Clocks) -> None:
    auth = service(meta_store, clocks, TTL)
    user = auth.create_user("dev@example.com", "password1", "editor")
    issued = auth.create_api_token(user.id, "ci", "editor")
    auth.verify_api_token(issued.token)
    with meta_store.session() as s:
        s.execute(sa.update(User).where(User.id == user.id).values(disabled=True))
    assert auth.verify_api_token(issued.token).role == "editor"  # the documented window
    clocks.advance(TTL + 0.1)
    with pytest.raises(Unauthorized, match="user disabled"):
        auth.verify_api_token(issued.token)


def test_unknown_tokens_are_not_cached(counting: CountingStore, clocks: Clocks) -> None:
    auth = service(counting, clocks, TTL)
    counting.sessions = 0
    for _ in range(3):
        with pytest.raises(Unauthorized):
            auth.verify_api_token("swa_not-a-token-at-all")
    assert counting.sessions == 3
    assert auth._api_cache == {}

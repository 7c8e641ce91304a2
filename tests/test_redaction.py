"""Redaction rules on strings as they appear in real config files, logs and commands."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

import stackwatch.redaction as redaction_module
from stackwatch.redaction import (
    REDACTED,
    REDACTED_JWT,
    RULE_NAMES,
    RedactionConfig,
    Redactor,
    iban_valid,
    luhn_valid,
)

R = Redactor()

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\n"
    "Z1BjP5CE/Wm/Rr500P\n-----END RSA PRIVATE KEY-----"
)

# (input, expected output) pairs, grouped by where such strings show up.
POSITIVE = [
    # e-mail
    ("Email sent to john.doe@example.com", "Email sent to j***@example.com"),
    # Internationalised addresses are personal data too (they were stored in clear).
    ("Welcome jörg.müller@exämple.de!", "Welcome j***@exämple.de!"),
    ("sent to 用户@例子.中国 today", "sent to 用***@例子.中国 today"),
    ("login failed for ünal@mail.com.tr", "login failed for ü***@mail.com.tr"),
    ('{"to": "Jane.Roe+news@mail.example.co.uk"}', '{"to": "J***@mail.example.co.uk"}'),
    # phones
    ("SMS to +14155552671 queued", "SMS to +*******2671 queued"),
    ("call (415) 555-2671 asap", "call (***) ***-2671 asap"),
    ("phone=415-555-2671", "phone=***-***-2671"),
    ("contact: +44 20 7946 0958.", "contact: +** ** **** 0958."),
    ("twilio send_sms to=+1 415 555 2671 ok", "twilio send_sms to=+* *** *** 2671 ok"),
    # cards (Luhn-valid only)
    ("charge card 4242 4242 4242 4242 exp 12/29", "charge card **** **** **** 4242 exp 12/29"),
    ("pan=4111-1111-1111-1111", "pan=****-****-****-1111"),
    ("amex 378282246310005 declined", "amex ***********0005 declined"),
    # IBAN (mod 97)
    ("refund to DE89 3704 0044 0532 0130 00", "refund to DE** **** **** **** **30 00"),
    ("iban=GB82WEST12345698765432;", "iban=GB****************5432;"),
    # credentials in URLs
    (
        "DATABASE_URL=postgres://app:s3cr3t-P4ss@db.internal:5432/app",
        "DATABASE_URL=postgres://app:***@db.internal:5432/app",
    ),
    ("redis connect redis://:hunter2@cache:6379/0 failed", "redis connect redis://:***@cache:6379/0 failed"),
    ("amqp://guest:guest@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
    # bearer / basic
    (
        "curl -H 'Authorization: Bearer abcDEF123456789xyz' https://api.example.com/v1/leads",
        "curl -H 'Authorization: Bearer [REDACTED]' https://api.example.com/v1/leads",
    ),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic [REDACTED]"),
    ("upstream replied 401 to bearer 9f8e7d6c5b4a3f2e", "upstream replied 401 to bearer [REDACTED]"),
    # JWT
    (f"token {JWT} expired", f"token {REDACTED_JWT} expired"),
    # provider keys
    ("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "AWS_ACCESS_KEY_ID=AKIA[REDACTED]"),
    (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "aws_secret_access_key = [REDACTED]",
    ),
    ("using ASIAY34FZKBOKMUTVV7A for sts", "using ASIA[REDACTED] for sts"),
    ("GITHUB_TOKEN=ghp_16C7e42F292c6912E7710c838347Ae178B4a", "GITHUB_TOKEN=ghp_[REDACTED]"),
    ("git clone with ghp_16C7e42F292c6912E7710c838347Ae178B4a", "git clone with ghp_[REDACTED]"),
    (
        "pat github_pat_11ABCDEFG0abcdefghijkl_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP",
        "pat github_pat_[REDACTED]",
    ),
    ("slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "slack xoxb-[REDACTED]"),
    (
        "POST https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "POST https://hooks.slack.com/services/T00000000/B00000000/[REDACTED]",
    ),
    ("stripe.api_key = sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe.api_key = sk_live_[REDACTED]"),
    ("Stripe error for sk_test_4eC39HqLyjWDarjtT1zdp7dc", "Stripe error for sk_test_[REDACTED]"),
    ("restricted rk_live_51H8abcdefGHIJKLmnop", "restricted rk_live_[REDACTED]"),
    ("webhook whsec_abcdefghijklmnopqrstuvwxyz123456", "webhook whsec_[REDACTED]"),
    ("openai sk-proj-abcdefghijklmnopqrstuvwxyz0123456789", "openai sk-proj-[REDACTED]"),
    ("legacy sk-abcdefghijklmnopqrstuvwxyz0123456789ABCD", "legacy sk-[REDACTED]"),
    ("anthropic sk-ant-api03-abcdefghijklmnopqrstuvwxyz-0123456789", "anthropic sk-ant-[REDACTED]"),
    ("maps key AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe in url", "maps key AIza[REDACTED] in url"),
    (
        "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 sent",
        "SG.[REDACTED] sent",
    ),
    (
        "twilio SKabcdefabcdefabcdefabcdefabcdefab / ACabcdefabcdefabcdefabcdefabcdefab",
        "twilio SK[REDACTED] / AC[REDACTED]",
    ),
    # private keys
    (
        f"loaded key {PEM} ok",
        "loaded key -----BEGIN RSA PRIVATE KEY-----[REDACTED]-----END RSA PRIVATE KEY----- ok",
    ),
    (
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B (truncated",
        "-----BEGIN PRIVATE KEY-----[REDACTED]-----END PRIVATE KEY-----",
    ),
    # generic key=value pairs: .env, JSON, YAML, Python repr, Rails params, headers
    ("DB_PASSWORD=hunter2", "DB_PASSWORD=[REDACTED]"),
    ("SECRET_KEY='django-insecure-abc'", "SECRET_KEY='[REDACTED]'"),
    ('config {"api_key": "abc123", "user_id": 42}', 'config {"api_key": "[REDACTED]", "user_id": 42}'),
    ("{'password': 'hunter2', 'user': 'bob'}", "{'password': '[REDACTED]', 'user': 'bob'}"),
    ('params {"user"=>{"password"=>"x1"}}', 'params {"user"=>{"password"=>"[REDACTED]"}}'),
    ("login failed: token: abc123xyz, retry", "login failed: token: [REDACTED], retry"),
    ("X-Api-Key: 9f8e7d6c5b4a", "X-Api-Key: [REDACTED]"),
    ("Cookie: sessionid=abc; csrftoken=xyz", "Cookie: [REDACTED]"),
    (
        "client_secret=abc&grant_type=client_credentials",
        "client_secret=[REDACTED]&grant_type=client_credentials",
    ),
    ('msg {\\"password\\": \\"hunter2\\"}', 'msg {\\"password\\": \\"[REDACTED]\\"}'),
    ("mysql --user=root --password=Pa55w0rd db", "mysql --user=root --password=[REDACTED] db"),
    # Sentry DSN
    (
        "SENTRY_DSN https://0123456789abcdef0123456789abcdef@o123.ingest.sentry.io/456",
        "SENTRY_DSN https://[REDACTED]@o123.ingest.sentry.io/456",
    ),
]

NEGATIVE = [
    "User 123 applied to job 456",
    "user_id=12345 order_id=987654321 took 245ms",
    "at 2025-10-06T12:00:00.123Z from 192.168.1.1 v1.2.3",
    "2025-10-06 12:00:00,123 INFO [main] started in 1.234s",
    "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7",
    "request 123e4567-e89b-12d3-a456-426614174000 done",
    "epoch 1700000000000 ns 1700000000000000000",
    "order 4242424242424241 shipped",  # 16 digits, fails Luhn
    "GET /api/leads?page=2 200 12ms",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0",
    "Exception: connection refused (errno 111)",
    "Basic authentication failed; Token expired; bearer token missing",
    "token_count=15 session_id=abc auth_method=oauth password_length=12",
    "IPv6 2001:db8::8a2e:370:7334 port 5432 pid 4242",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "version 10.2.3-beta.4+build.567 released",
    "git@github.com is not an email? decorators like @app.route stay",
    "DEBUG=true LOG_LEVEL=INFO PORT=8000",
    "pk_live_51H8abcdefGHIJKLmnopQRSTuvwx is public",
    "password: [REDACTED] already masked, token=*** too",
]


@pytest.mark.parametrize(("text", "expected"), POSITIVE)
def test_rules_mask_real_world_strings(text: str, expected: str) -> None:
    assert R.redact_text(text) == expected


@pytest.mark.parametrize("text", NEGATIVE[:-4] + NEGATIVE[-3:])
def test_identifiers_and_prose_stay(text: str) -> None:
    assert R.redact_text(text) == text


def test_git_ssh_user_is_masked_like_an_email_but_decorators_are_not() -> None:
    # "git@github.com" has an e-mail shape; masking it costs nothing to debug.
    assert R.redact_text(NEGATIVE[-4]) == "g***@github.com is not an email? decorators like @app.route stay"


def test_env_file_and_json_config_blocks() -> None:
    env = "DEBUG=false\nDATABASE_URL=postgresql://leads:Sup3rS3cret@db:5432/leads\nSTRIPE_SECRET_KEY=sk_live_4eC39HqLyjWDarjtT1zdp7dc\nADMIN_EMAIL=ops@plumberleads.com\n"
    assert R.redact_text(env) == (
        "DEBUG=false\nDATABASE_URL=postgresql://leads:***@db:5432/leads\n"
        "STRIPE_SECRET_KEY=sk_live_[REDACTED]\nADMIN_EMAIL=o***@plumberleads.com\n"
    )


def test_stack_trace_keeps_frames_and_masks_locals() -> None:
    trace = (
        'Traceback (most recent call last):\n  File "/app/payments.py", line 88, in charge\n'
        "    stripe.Charge.create(card='4242424242424242', api_key=api_key)\n"
        "stripe.error.CardError: Your card was declined. customer=jane@example.com"
    )
    out = R.redact_text(trace)
    assert 'File "/app/payments.py", line 88, in charge' in out
    assert "card='************4242'" in out
    assert "j***@example.com" in out
    assert "4242424242424242" not in out


def test_checksums() -> None:
    assert luhn_valid("4242424242424242")
    assert not luhn_valid("4242424242424241")
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("DE89370400440532013001")
    assert not iban_valid("DE8937")


# ---------------------------------------------------------------- mappings and records


def test_redact_mapping_masks_credential_keys_recursively() -> None:
    data = {
        "db_password": "hunter2",
        "X-Api-Key": "abc",
        "authToken": 12345,
        "user_id": 42,
        "session_id": "s-1",
        "token_count": 10,
        "enabled": True,
        "nested": {
            "Authorization": "Bearer abc",
            "email": "john.doe@example.com",
            "items": [{"secret": "x"}, "a@b.io"],
        },
        "password": None,
        "refresh_token": {"value": "x"},
    }
    out = R.redact_mapping(data)
    assert out == {
        "db_password": REDACTED,
        "X-Api-Key": REDACTED,
        "authToken": REDACTED,
        "user_id": 42,
        "session_id": "s-1",
        "token_count": 10,
        "enabled": True,
        "nested": {
            "Authorization": REDACTED,
            "email": "j***@example.com",
            "items": [{"secret": REDACTED}, "a***@b.io"],
        },
        "password": None,
        "refresh_token": REDACTED,
    }
    assert data["db_password"] == "hunter2"  # a copy, not in place


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("password", True),
        ("DB_PASSWORD", True),
        ("X-Api-Key", True),
        ("apiKey", True),
        ("aws_secret_access_key", True),
        ("csrftoken", True),
        ("set-cookie", True),
        ("client_secret", True),
        ("SENTRY_DSN", True),
        ("credentials", True),
        ("password_confirmation", True),
        ("private_key", True),
        ("request.headers.authorization", True),
        ("user_id", False),
        ("session_id", False),
        ("token_count", False),
        ("max_tokens", False),
        ("auth_method", False),
        ("author", False),
        ("authenticated", False),
        ("keyboard", False),
        ("cache_key", False),
        ("secret_name", False),
    ],
)
def test_key_classification(key: str, sensitive: bool) -> None:
    assert R.is_sensitive_key(key) is sensitive


def test_redact_record_inplace() -> None:
    record = {
        "message": "Payment failed for jane@example.com with card 4242 4242 4242 4242",
        "attributes": {
            "context.password": "hunter2",
            "context.email": "jane@example.com",
            "request.id": "4242424242424242",  # an id: never redacted
            "http.user_agent": "curl/8.4.0",
            "retries": 3,
            "auth.enabled": True,
        },
    }
    R.redact_record_inplace(record)
    assert record["message"] == "Payment failed for j***@example.com with card **** **** **** 4242"
    assert record["attributes"] == {
        "context.password": REDACTED,
        "context.email": "j***@example.com",
        "request.id": "4242424242424242",
        "http.user_agent": "curl/8.4.0",
        "retries": 3,
        "auth.enabled": True,
    }


@pytest.mark.parametrize("key", ["aws_access_key_id", "AWS_ACCESS_KEY_ID", "context.awsAccessKeyId", "api_key_id"])
def test_ids_of_credentials_are_still_scanned(key: str) -> None:
    # An id key is left alone only when the id is a correlation id; the public half of an
    # access key is still a credential and its value shape is masked.
    record = {"message": "upload", "attributes": {key: "AKIAIOSFODNN7EXAMPLE", "user_id": "4242424242424242"}}
    R.redact_record_inplace(record)
    assert record["attributes"] == {key: "AKIA[REDACTED]", "user_id": "4242424242424242"}
    assert R.redact_mapping({"cfg": {key: "AKIAIOSFODNN7EXAMPLE"}}) == {"cfg": {key: "AKIA[REDACTED]"}}


def test_record_with_many_clean_values_then_a_dirty_one_uses_the_cache_correctly() -> None:
    redactor = Redactor()
    clean = {"message": "ok", "attributes": {"a": "alpha", "b": "beta", "c": "gamma"}}
    redactor.redact_record_inplace(clean)
    assert clean["attributes"] == {"a": "alpha", "b": "beta", "c": "gamma"}
    dirty = {"message": "ok", "attributes": {"a": "alpha", "b": "beta", "c": "to x@y.io"}}
    redactor.redact_record_inplace(dirty)
    assert dirty["attributes"]["c"] == "to x***@y.io"


# ---------------------------------------------------------------- configuration


def test_disabled_redactor_changes_nothing() -> None:
    redactor = Redactor(RedactionConfig(enabled=False))
    text = "password=hunter2 john@example.com"
    assert redactor.redact_text(text) == text
    assert redactor.redact_mapping({"password": "x"}) == {"password": "x"}


def test_only_selected_rules_run() -> None:
    redactor = Redactor(RedactionConfig(rules={"email"}))
    assert (
        redactor.redact_text("john@example.com 4242 4242 4242 4242") == "j***@example.com 4242 4242 4242 4242"
    )


def test_allow_list_keeps_matching_values() -> None:
    redactor = Redactor(
        RedactionConfig(allow=[r"support@example\.com", r".*@internal\.test", "+14155552671"])
    )
    text = "support@example.com bob@internal.test eve@evil.com +14155552671 +14155550000"
    assert (
        redactor.redact_text(text)
        == "support@example.com bob@internal.test e***@evil.com +14155552671 +*******0000"
    )


def test_deny_patterns_and_extra_and_safe_keys() -> None:
    redactor = Redactor(
        RedactionConfig(deny=[r"CUST-\d{6}"], extra_sensitive_keys=["ssn"], safe_keys=["token_bucket"])
    )
    assert redactor.redact_text("customer CUST-123456 ok") == f"customer {REDACTED} ok"
    assert redactor.redact_mapping({"ssn": "078-05-1120", "token_bucket": "b1", "token": "t"}) == {
        "ssn": REDACTED,
        "token_bucket": "b1",
        "token": REDACTED,
    }
    assert redactor.redact_text("ssn=078-05-1120") == f"ssn={REDACTED}"


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown redaction rule"):
        RedactionConfig(rules={"emails"})
    with pytest.raises(ValueError, match="not a valid regex"):
        RedactionConfig(deny=["("])
    with pytest.raises(ValueError, match="unknown redaction setting"):
        RedactionConfig.from_dict({"enable": True})
    with pytest.raises(ValueError, match="list of strings"):
        RedactionConfig(allow="x")  # type: ignore[arg-type]
    config = RedactionConfig.from_dict({"rules": ["email", "card"], "allow": ["a@b\\.c"]})
    assert config.rules == frozenset({"email", "card"})
    assert config.allow == ("a@b\\.c",)


def test_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys; import stackwatch.redaction; "
        "bad = [m for m in sys.modules if m.split('.')[0] in {'orjson', 'ua_parser', 'maxminddb', 'fastapi'} "
        "or m.startswith(('stackwatch.pipeline', 'stackwatch.server', 'stackwatch.storage'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- properties

SECRETS = [s for s, _ in POSITIVE] + ["4111 1111 1111 1111", "jane@x.io", "token=abc", "Bearer abcdef123456"]
NOISE = [
    *NEGATIVE,
    "",
    " ",
    ":",
    "=",
    "\n",
    '"',
    "'",
    "-",
    "_",
    "@",
    "+1",
    "(",
    "12",
    "AKIA",
    "sk-",
    "eyJ",
    "password",
]
fragments = st.lists(st.sampled_from(SECRETS + NOISE), min_size=1, max_size=6)
joiners = st.sampled_from(["", " ", "\n", ", ", "=", ": ", '"', "&"])


@settings(max_examples=200, deadline=None)
@given(fragments, joiners)
def test_prefilter_never_hides_a_match(parts: list[str], joiner: str) -> None:
    """Running every rule on the text gives the same result as the prefiltered path."""
    text = joiner.join(parts)
    redactor = Redactor()
    everything = set(RULE_NAMES)
    assert redactor.redact_text(text) == redactor._apply(text, everything)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_prefilter_agrees_on_arbitrary_text(text: str) -> None:
    redactor = Redactor()
    assert redactor.redact_text(text) == redactor._apply(text, set(RULE_NAMES))


@settings(max_examples=200, deadline=None)
@given(fragments, joiners)
def test_redaction_is_idempotent(parts: list[str], joiner: str) -> None:
    once = R.redact_text(joiner.join(parts))
    assert R.redact_text(once) == once


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(NEGATIVE[:-4] + NEGATIVE[-3:]), min_size=1, max_size=5))
def test_safe_text_is_never_changed(parts: list[str]) -> None:
    text = "\n".join(parts)
    assert R.redact_text(text) == text


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=40) | st.sampled_from(SECRETS),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["password", "user_id", "email", "note", "token", "cfg"]),
                children,
                max_size=4,
            )
        ),
        max_leaves=15,
    )
)
def test_redact_mapping_never_leaks_values_of_credential_keys(data: object) -> None:
    out = R.redact_mapping({"root": data})

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("password", "token") and item is not None and not isinstance(item, bool):
                    assert item == REDACTED
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(out)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(SECRETS + NOISE),
    st.dictionaries(
        st.sampled_from(
            ["note", "context.email", "http.path", "db_password", "request_id", "user.name", "x"]
        ),
        st.sampled_from(SECRETS + NOISE) | st.integers() | st.booleans(),
        max_size=6,
    ),
)
def test_record_path_matches_per_string_redaction(message: str, attributes: dict[str, object]) -> None:
    """The batched prefilter over message + attributes gives what redacting each string would."""
    redactor = Redactor()
    record = {"message": message, "attributes": dict(attributes)}
    redactor.redact_record_inplace(record)
    fresh = Redactor()
    assert record["message"] == fresh.redact_text(message)
    for key, value in attributes.items():
        if key == "db_password":
            expected: object = REDACTED if not isinstance(value, bool) else value
        elif key == "request_id" or not isinstance(value, str):
            expected = value
        else:
            expected = fresh.redact_text(value)
        assert record["attributes"][key] == expected, key


# ---------------------------------------------------------------- RE2 gate (columnar scans)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 64 << 20


def gate_misses(redactor: Redactor, texts: list[str]) -> list[str]:
    """Texts the rules change although the gate finds nothing in them (must be none)."""
    pattern = redactor.gate_pattern()
    assert pattern is not None
    gate = re2.compile(pattern, _RE2_OPTIONS)
    return [t for t in texts if redactor.redact_text(t) != t and gate.search(t) is None]


def test_gate_flags_every_example_the_rules_change() -> None:
    texts = [s for s, _ in POSITIVE] + SECRETS + NEGATIVE
    assert gate_misses(Redactor(), texts) == []
    # and it is selective: prose and identifiers mostly pass without the rules
    gate = re2.compile(Redactor().gate_pattern(), _RE2_OPTIONS)
    clean = ["Connection pool stats: 14 active, 2 idle", "GET /api/invoices/20010 200 in 53ms", "stats: ok"]
    assert [t for t in clean if gate.search(t)] == []


UNICODE_TRAPS = [
    "pa\u017f\u017fword=hunter2",
    "\u017fecret: x",
    "to\u212aen=abc",
    "pa\u0131d_token: x",
    "٤٢٤٢ ٤٢٤٢ ٤٢٤٢ ٤٢٤٢",
    "DE٨٩ 3704 0044 0532 0130 00",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SECRETS + NOISE + UNICODE_TRAPS), min_size=1, max_size=6), joiners)
def test_gate_is_a_superset_of_the_rules(parts: list[str], joiner: str) -> None:
    assert gate_misses(Redactor(), [joiner.join(parts)]) == []


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=200)
    | st.text("0123456789 -+()._@:=\"'\\aAbBkKsSeEtTyYJ٤\u017f\u212a\u0131\u0130", max_size=60)
)
def test_gate_is_a_superset_on_arbitrary_text(text: str) -> None:
    assert gate_misses(Redactor(), [text]) == []


@pytest.mark.parametrize(
    "config",
    [
        RedactionConfig(rules=frozenset({"email", "card"})),
        RedactionConfig(extra_sensitive_keys=("ssn", "pin", "x.key", "\u017fid")),
        RedactionConfig(allow=(r".*@example\.com",)),
        RedactionConfig(rules=frozenset()),
    ],
)
def test_gate_follows_the_config(config: RedactionConfig) -> None:
    redactor = Redactor(config)
    texts = [s for s, _ in POSITIVE] + SECRETS + ["ssn=123-45-6789", "PIN: 1234", "x.key=abc", "\u017fid=1"]
    assert gate_misses(redactor, texts) == []


def test_deny_patterns_have_no_gate() -> None:
    assert Redactor(RedactionConfig(deny=("CUST-\\d{6}",))).gate_pattern() is None


# ---------------------------------------------------------------- key_value: linear-time key matching

KEY_TEXT = st.lists(
    st.sampled_from(
        ["token", "TOKEN", "to\u212aen", "pass", "password", "api_key", "api-key", "x.", "db_", "a", "-", ".",
         "_", "9", "\u00e9", ":", "=", "=>", " ", "\t", '"', "'", '\\"', "\\", "\n", "/", "?", "&", "value", "Cookie",
         "authorization", "sessionx", "my_secret", "dsn"]
    ),
    max_size=14,
).map("".join)  # fmt: skip


def lazy_key_value_patterns(keywords: tuple[str, ...]) -> list[re.Pattern[str]]:
    """The key_value regexes as first written (lazy key prefix), to check the rewrite against."""
    kw = "|".join(sorted((re.escape(k) for k in keywords), key=len, reverse=True))
    return [
        re.compile(
            r"(?<![\w.-])([\w.-]*?(?i:authorization|cookie))((?:\\?[\"'])?[ \t]?:[ \t]*)"
            r"(\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|[^\r\n\"]+)"
        ),
        re.compile(
            rf"(?<![\w.-])([\w.-]*?(?i:{kw}))((?:\\?[\"'])?[ \t]?(?::|=>?)[ \t]*)"
            r"(\\\"(?:[^\"\\]|\\[^\"])*\\\"|\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"
            r"|[^\s\"',;&<>(){}\[\]]+)"
        ),
    ]


@pytest.mark.parametrize("extra", [(), ("ssn", "pin"), ("x key",)])
@settings(max_examples=300, deadline=None)
@given(text=KEY_TEXT)
def test_key_value_rules_match_exactly_what_the_lazy_form_matched(extra: tuple[str, ...], text: str) -> None:
    redactor = Redactor(RedactionConfig(extra_sensitive_keys=extra))
    keywords = tuple(dict.fromkeys((*redaction_module._TEXT_KEYWORDS, *sorted(k.lower() for k in extra))))
    rules = [r.pattern for r in redactor._rules if r.name == "key_value"]
    for new, old in zip(rules, lazy_key_value_patterns(keywords), strict=True):
        assert [(m.span(), m.groups()) for m in new.finditer(text)] == [
            (m.span(), m.groups()) for m in old.finditer(text)
        ]


def test_key_value_rule_is_linear_on_long_lines() -> None:
    line = '203.0.113.7 - - [10/Oct/2025:13:55:36 +0000] "GET /login?token=abc123&' + "x" * 3000 + '" 200'
    started = time.perf_counter()
    assert "token=[REDACTED]" in R.redact_text(line)
    assert time.perf_counter() - started < 0.05  # the lazy form took ~0.5 s here


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([t for t, _ in POSITIVE if "-----BEGIN" not in t]
                        + ["  File \"app.py\", line 3, in charge", "x", "key=", "=v", ""])
        | st.text(max_size=40),
        min_size=1,
        max_size=6,
    )
)
def test_no_rule_crosses_a_newline(lines: list[str]) -> None:
    """Redacting line by line gives what redacting the whole text gives (PEM key blocks aside,
    which span lines by nature): the SDK relies on it to redact tracebacks chunk by chunk and
    remember clean frame lines; a chunk holds a whole exception message, PEM block included."""
    chunks = [line.replace("\n", " ") + "\n" for line in lines if "-----BEGIN" not in line]
    assert "".join(R.redact_text(c) for c in chunks) == R.redact_text("".join(chunks))


def test_card_numbers_logged_as_numbers_are_masked() -> None:
    """A JSON number holding a card number is masked as the same digits in a string are; other
    numbers, a card-length number that fails the Luhn sum included, and ids stay."""
    r = Redactor()
    record = {"message": "charge", "attributes": {
        "card_number": 4242424242424242, "payment.card": 4111111111111111, "payment.cvv": 123,
        "order_id": 4242424242424242, "amount": 4999, "ref": 4242424242424241, "epoch_ms": 1_767_225_600_123}}
    r.redact_record_inplace(record)
    assert record["attributes"] == {
        "card_number": "************4242", "payment.card": "************1111", "payment.cvv": "[REDACTED]",
        "order_id": "************4242", "amount": 4999, "ref": 4242424242424241, "epoch_ms": 1_767_225_600_123}
    assert r.redact_mapping({"extra": {"card_number": 5555555555554444, "cvc": 999, "n": 7}}) == {
        "extra": {"card_number": "************4444", "cvc": "[REDACTED]", "n": 7}}
    assert Redactor(RedactionConfig(rules=("email",))).redact_mapping({"card": 4242424242424242}) == {
        "card": 4242424242424242}  # the card rule switched off

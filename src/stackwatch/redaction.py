"""Secret and PII redaction, shared by the server's log pipeline and the in-app SDK.

This module imports only the standard library: the SDK imports it inside users' apps, where
pulling in server code (or any third-party package) would be a cost they did not ask for.

What is masked, and how (each mask keeps enough to debug with):

====================  =============================================  ===========================
rule                  example                                        becomes
====================  =============================================  ===========================
``private_key``       ``-----BEGIN RSA PRIVATE KEY-----...``         header/footer kept
``jwt``               ``eyJhbGciOi...``                              ``[REDACTED_JWT]``
``auth_header``       ``Bearer abc123...``, ``Basic dXNl...``        ``Bearer [REDACTED]``
``url_credentials``   ``postgres://user:pass@host/db``               ``postgres://user:***@host/db``
``sentry_dsn``        ``https://<32 hex>@o1.ingest.sentry.io/2``     ``https://[REDACTED]@o1...``
``aws``               ``AKIA...`` ids, ``aws_secret_access_key=``    ``AKIA[REDACTED]``
``github``            ``ghp_...``, ``github_pat_...``                ``ghp_[REDACTED]``
``slack``             ``xoxb-...``, hooks.slack.com webhook URLs     ``xoxb-[REDACTED]``
``stripe``            ``sk_live_...``, ``rk_test_...``, ``whsec_``   ``sk_live_[REDACTED]``
``anthropic``         ``sk-ant-...``                                 ``sk-ant-[REDACTED]``
``openai``            ``sk-...``, ``sk-proj-...``                    ``sk-proj-[REDACTED]``
``google``            ``AIza...`` (39 chars)                         ``AIza[REDACTED]``
``sendgrid``          ``SG.xxx.yyy``                                 ``SG.[REDACTED]``
``twilio``            ``SK`` / ``AC`` + 32 hex                       ``SK[REDACTED]``
``key_value``         ``password=hunter2``, ``"api_key": "x"``       ``password=[REDACTED]``
``email``             ``john.doe@example.com``                       ``j***@example.com``
``card``              ``4242 4242 4242 4242`` (Luhn-valid only)      ``**** **** **** 4242``
``iban``              ``DE89 3704 0044 0532 0130 00`` (mod 97)       ``DE** **** ... **30 00``
``phone``             ``+14155552671``, ``(415) 555-2671``           ``+*******2671``
====================  =============================================  ===========================

Stripe publishable keys (``pk_live_``) are public by design and stay. In free text, a
``key=value`` / ``key: value`` pair is masked when the key *ends* with a credential word
(``DB_PASSWORD=``, ``X-Api-Key:``, ``"client_secret":``); ``Cookie:`` and ``Authorization:``
lose their whole value. In mappings (and flattened record attributes), a key is credential-
named when one of its words is (``password_confirmation``, ``authToken``), unless its last
word says it only describes one (``token_count``, ``password_length``, ``auth_method``).

Identifiers are left alone on purpose: user ids, order ids, trace ids, UUIDs, timestamps, IPs,
versions and durations are what people search logs by (the guides allow "user IDs for
correlation"), so the digit rules demand a phone/card/IBAN *shape* plus a checksum where one
exists, and ``*_id`` keys are never treated as credentials.

Speed: most log lines hold no secret, so :meth:`Redactor.redact_text` first runs one
precompiled prefilter regex whose alternatives all start with a literal character (so the
regex engine only stops at those characters) and whose named groups say which rules could
match; only those rules then run (the digit anchors in a regex of their own, which scans
digits far faster than the shared one; the '@' rules only over the words that hold an '@').
Strings found clean, by the prefilter or because no rule changed them, are remembered in a
bounded set, because attribute values (module names, paths, user agents) and the lines of a
traceback repeat from one event to the next.
The prefilter is a strict superset of the rules: a property test checks that running every
rule on every string gives the same output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "REDACTED",
    "REDACTED_JWT",
    "RULE_NAMES",
    "RedactionConfig",
    "Redactor",
    "iban_valid",
    "luhn_valid",
]

REDACTED: Final = "[REDACTED]"
REDACTED_JWT: Final = "[REDACTED_JWT]"

#: Every rule, in the order they are applied. Order matters: structured secrets (keys, tokens,
#: URLs) go before the generic shapes so that, e.g., the digits of a token are not read as a
#: phone number, and cards go before phones.
RULE_NAMES: Final[tuple[str, ...]] = (
    "private_key",
    "jwt",
    "auth_header",
    "url_credentials",
    "sentry_dsn",
    "aws",
    "github",
    "slack",
    "stripe",
    "anthropic",
    "openai",
    "google",
    "sendgrid",
    "twilio",
    "key_value",
    "email",
    "card",
    "iban",
    "phone",
)

#: Words that make a key credential-named. A key is split into words (``db_password`` ->
#: ``db``, ``password``; ``X-Api-Key`` -> ``x``, ``api``, ``key``; ``authToken`` -> ``auth``,
#: ``token``); it is sensitive when one word (or two adjacent ones, ``api`` + ``key``) is here.
_SENSITIVE_WORDS: Final = frozenset(
    {
        "password", "passwd", "passphrase", "pass", "pwd", "secret", "secrets", "token",
        "apikey", "accesskey", "secretkey", "privatekey", "signingkey", "encryptionkey",
        "masterkey", "auth", "authorization", "cookie", "cookies", "session", "credential",
        "credentials", "dsn", "cvv", "cvc", "cvv2", "cvc2", "cid",
    }
)  # fmt: skip
#: A single word that *ends* with one of these is sensitive too (``csrftoken``, ``dbpassword``).
_SENSITIVE_SUFFIXES: Final = (
    "password", "passwd", "secret", "token", "apikey", "accesskey", "secretkey", "privatekey",
    "cookie", "credentials", "credential",
)  # fmt: skip
#: When the *last* word of a key is one of these, the key describes a credential rather than
#: holding one (``token_count``, ``password_length``, ``session_id``, ``auth_method``).
_SAFE_LAST_WORDS: Final = frozenset(
    {
        "id", "ids", "uuid", "count", "counts", "type", "kind", "length", "len", "size", "ttl",
        "timeout", "expiry", "expires", "expiration", "expired", "age", "at", "enabled",
        "required", "status", "method", "methods", "provider", "version", "name", "names", "url",
        "uri", "endpoint", "path", "file", "location", "strategy", "scheme", "mode", "policy",
        "format", "algorithm", "alg", "hint", "present", "valid", "missing", "error", "reason",
        "level", "used", "remaining", "limit", "max", "min", "ms", "seconds", "duration", "index",
        "domain", "issuer", "scope", "scopes", "changed", "updated", "created", "rotated",
        "success", "failed", "failures", "attempts", "retries", "source",
    }
)  # fmt: skip
#: Keywords that, at the *end* of a key in free text followed by ``=`` or ``:``, mark a
#: credential (``DB_PASSWORD=...``, ``"api_key": "..."``, ``Authorization: ...``). Matching is
#: case-insensitive. Kept shorter than the mapping words: in prose, ``pass`` or ``pwd`` before
#: a colon are too often something else.
_TEXT_KEYWORDS: Final[tuple[str, ...]] = (
    "password", "passwd", "passphrase", "secret", "token", "apikey", "api_key", "api-key",
    "accesskey", "access_key", "access-key", "secretkey", "secret_key", "secret-key",
    "privatekey", "private_key", "private-key", "auth", "authorization", "cookie", "session",
    "credential", "credentials", "dsn",
)  # fmt: skip
#: Values that already say "hidden": re-masking them would only add noise.
_ALREADY_MASKED: Final = frozenset(
    {"", REDACTED, REDACTED_JWT, "[FILTERED]", "<redacted>", "redacted", "REDACTED", "null",
     "None", "none", "true", "false", "undefined", "***"}
)  # fmt: skip
_ID_WORDS: Final = frozenset({"id", "ids", "uuid", "guid"})
_AUTH_SCHEMES: Final = frozenset({"bearer", "basic", "digest", "token", "negotiate", "ntlm"})

#: Joins the strings of :meth:`Redactor.redact_texts`: line breaks around NULs, which no rule
#: matches across except a PEM key block. (Two NULs: callers may join their own texts with
#: one, as the SDK's log formatter does, and the split must not cut inside those.)
_TEXT_JOIN: Final = "\n\x00\x00\n"
_CLEAN_CACHE_MAX: Final = 65_536  # strings remembered as clean; the set is dropped when full
_CLEAN_CACHE_MAX_LEN: Final = 256  # longer strings are rarely repeated, so not worth keeping
_KEY_CACHE_MAX: Final = 16_384

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")


def luhn_valid(digits: str) -> bool:
    """True when a string of digits passes the Luhn checksum every payment card carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(compact: str) -> bool:
    """True when an IBAN without spaces passes ISO 13616's mod-97 check (remainder 1)."""
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


@dataclass(frozen=True)
class RedactionConfig:
    """What to redact. Defaults redact everything this module knows.

    ``rules``: rule names to enable (``None`` = all of :data:`RULE_NAMES`).
    ``allow``: regexes (or literals, when not a valid regex) that a would-be redacted value
    must *fully* match to be left alone, e.g. ``support@example\\.com`` or ``.*@example\\.com``.
    ``deny``: extra regexes whose matches are replaced by ``[REDACTED]``.
    ``extra_sensitive_keys``: more credential words for keys (``ssn``, ``pin``).
    ``safe_keys``: exact key names (case-insensitive) never redacted by name.
    """

    enabled: bool = True
    rules: frozenset[str] | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    extra_sensitive_keys: tuple[str, ...] = ()
    safe_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept any iterable from YAML/callers but store immutable, hashable forms.
        if self.rules is not None:
            rules = frozenset(self.rules)
            unknown = sorted(rules - set(RULE_NAMES))
            if unknown:
                raise ValueError(f"unknown redaction rule(s) {unknown}; known: {list(RULE_NAMES)}")
            object.__setattr__(self, "rules", rules)
        for name in ("allow", "deny", "extra_sensitive_keys", "safe_keys"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a list of strings, not the string {value!r}")
            object.__setattr__(self, name, tuple(str(v) for v in value))
        for pattern in self.deny:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"deny pattern {pattern!r} is not a valid regex: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RedactionConfig:
        """Build from a YAML-style mapping; unknown keys raise ``ValueError`` naming them."""
        if not data:
            return cls()
        known = {"enabled", "rules", "allow", "deny", "extra_sensitive_keys", "safe_keys"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown redaction setting(s) {unknown}; known: {sorted(known)}")
        kwargs: dict[str, Any] = dict(data)
        if "enabled" in kwargs and not isinstance(kwargs["enabled"], bool):
            raise ValueError(f"enabled must be true or false, not {kwargs['enabled']!r}")
        if kwargs.get("rules") is not None:
            kwargs["rules"] = frozenset(kwargs["rules"])
        return cls(**kwargs)


@dataclass
class _Rule:
    name: str
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str]


@dataclass
class _Anchor:
    """One prefilter alternative: a literal first character, the rest, and the rules it gates.

    Every match of a rule's full regex must contain a match of one of that rule's anchors;
    that is what lets the prefilter skip the rules on text without any anchor.
    """

    first: str
    rest: str
    rules: frozenset[str]


def _compile_allow(allow: Iterable[str]) -> re.Pattern[str] | None:
    parts = []
    for item in allow:
        try:
            re.compile(item)
            parts.append(f"(?:{item})")
        except re.error:
            parts.append(re.escape(item))
    return re.compile("|".join(parts)) if parts else None


def _mask_keep_last(text: str, keep: int, *, keep_first: int = 0, alnum: bool = False) -> str:
    """Replace digits (or letters and digits) with ``*`` except the first/last few; keep separators."""
    is_kept = str.isalnum if alnum else str.isdigit
    positions = [i for i, ch in enumerate(text) if is_kept(ch)]
    visible = set(positions[:keep_first]) | set(positions[len(positions) - keep :])
    return "".join(ch if (i in visible or not is_kept(ch)) else "*" for i, ch in enumerate(text))


class Redactor:
    """Masks secrets and PII in strings, nested mappings and log records.

    Build one per configuration and reuse it: construction compiles the regexes, and the
    instance keeps small caches of clean strings and classified keys. Instances are safe to
    share between threads (the caches only ever hold derived, non-secret facts).
    """

    def __init__(self, rules: RedactionConfig | None = None) -> None:
        config = rules or RedactionConfig()
        self.config = config
        self.enabled = config.enabled
        enabled = set(RULE_NAMES if config.rules is None else config.rules)
        self._allow = _compile_allow(config.allow)
        self._extra_words = frozenset(w.lower() for w in config.extra_sensitive_keys)
        self._safe_keys = frozenset(k.lower() for k in config.safe_keys)
        keywords = tuple(dict.fromkeys((*_TEXT_KEYWORDS, *sorted(self._extra_words))))
        self._text_keywords = tuple(k.lower() for k in keywords)
        all_rules = self._build_rules(keywords)
        self._rules = [r for r in all_rules if r.name in enabled]
        if config.deny:
            deny = re.compile("|".join(f"(?:{p})" for p in config.deny))
            self._rules.append(_Rule("deny", deny, self._replace_deny))
            self._deny: re.Pattern[str] | None = deny
        else:
            self._deny = None
        self._prefilter, self._group_rules = self._build_prefilter(keywords, enabled)
        self._at_rules = [rule for rule in self._rules if rule.name in _AT_RULES]
        #: Whether payment card numbers are masked (then also those logged as numbers).
        self._card_rule = any(rule.name == "card" for rule in self._rules)
        self._gate = (
            None
            if config.deny
            else "|".join(f"(?:{gate})" for name, gate in _re2_gates(keywords).items() if name in enabled)
        )
        self._clean: set[str] = set()
        self._key_cache: dict[str, bool] = {}
        self._keyset_cache: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...] | None]] = {}

    # ------------------------------------------------------------------ public API

    def redact_text(self, text: str) -> str:
        """Return ``text`` with every enabled rule applied; clean text is returned as is."""
        if not self.enabled or not text:
            return text
        if text in self._clean:
            return text
        groups = self._candidate_rules(text)
        if groups is None:
            self._remember_clean(text)
            return text
        return self._apply_and_remember(text, groups)

    def redact_texts(self, texts: Sequence[str]) -> list[str] | None:
        """:meth:`redact_text` for several strings at once; None when none of them changes.

        The same result as ``[redact_text(t) for t in texts]``, with one prefilter pass for
        all the strings not already known clean (joined with a separator no rule matches
        across) instead of one per string; the rules run only when that pass finds a
        candidate, once over the joined text (each string on its own if a mask ate a
        separator, which only a PEM key block can). Each string is remembered as clean on
        its own, as :meth:`redact_text` would.
        """
        if not self.enabled:
            return None
        clean = self._clean
        pending = [i for i, text in enumerate(texts) if text and text not in clean]
        if not pending:
            return None
        if len(pending) == 1:
            index = pending[0]
            text = texts[index]
            redacted = self._redact_new_text(text)
            if redacted == text:
                return None
            out = list(texts)
            out[index] = redacted
            return out
        joined = _TEXT_JOIN.join([texts[i] for i in pending])
        groups = self._candidate_rules(joined)
        if groups is not None:
            redacted = self._apply(joined, groups)
            if redacted != joined:
                parts = redacted.split(_TEXT_JOIN)
                if len(parts) != len(pending):
                    parts = [self._redact_new_text(texts[i]) for i in pending]
                out = list(texts)
                for i, part in zip(pending, parts, strict=True):
                    out[i] = part
                return out
        # Clean (or no rule changed anything): remember each string, as redact_text would.
        if len(clean) >= _CLEAN_CACHE_MAX:
            clean.clear()
        for i in pending:
            text = texts[i]
            if len(text) <= _CLEAN_CACHE_MAX_LEN:
                clean.add(text)
        return None

    def redact_mapping(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        """Return a copy of ``data`` with credential-named keys' values replaced and strings redacted.

        Recurses into nested mappings and lists. A value under a credential-named key becomes
        ``[REDACTED]`` whole (whatever its type), except ``None`` and booleans, which say
        nothing secret; ``*_id`` keys and :attr:`RedactionConfig.safe_keys` are never masked
        by name (their strings still go through the text rules).
        """
        if not self.enabled:
            return dict(data)
        return {k: self._redact_value(k, v) for k, v in data.items()}

    def redact_record_inplace(self, record: dict[str, Any]) -> None:
        """Redact a log record (see :mod:`stackwatch.model.logs`) in place.

        The message and every string attribute go through the text rules; attributes whose
        (flattened, dotted) key is credential-named become ``[REDACTED]``.
        """
        if not self.enabled:
            return
        clean = self._clean
        message = record.get("message")
        pending: list[str] = []  # attribute keys whose strings are new
        attributes = record.get("attributes")
        if attributes:
            pending = self._mask_keys_and_list_strings(attributes)
        scan_message = message.__class__ is str and message and message not in clean
        if not pending:
            if scan_message:
                record["message"] = self._redact_new_text(message)
            return
        values = [attributes[k] for k in pending]  # type: ignore[index]
        if scan_message:
            values.append(message)
        if len(values) == 1:
            attributes[pending[0]] = self._redact_new_text(values[0])  # type: ignore[index]
            return
        # One prefilter pass over all new strings; '\n' keeps each string's own boundaries.
        if self._candidate_rules("\n".join(values)) is None:
            if len(clean) >= _CLEAN_CACHE_MAX:
                clean.clear()
            for value in values:
                if len(value) <= _CLEAN_CACHE_MAX_LEN:
                    clean.add(value)
            return
        for key, value in zip(pending, values, strict=False):
            attributes[key] = self._redact_new_text(value)  # type: ignore[index]
        if scan_message:
            record["message"] = self._redact_new_text(message)

    def is_sensitive_key(self, key: str) -> bool:
        """True when a key names a credential (``db_password``, ``X-Api-Key``, ``authToken``)."""
        cached = self._key_cache.get(key)
        if cached is None:
            cached = self._classify_key(key)
            if len(self._key_cache) >= _KEY_CACHE_MAX:
                self._key_cache.clear()
            self._key_cache[key] = cached
        return cached

    def is_scanned_key(self, key: str) -> bool:
        """True when a record attribute's strings go through the text rules (see
        :meth:`redact_record_inplace`): the key is neither credential-named nor an id key."""
        return not self.is_sensitive_key(key) and not self._is_id_key(key)

    def mask_number(self, value: Any) -> Any:
        """A card number logged as a JSON number, masked as the text rule masks it in a string
        (``4242424242424242`` -> ``************4242``); any other value as it is.

        Only integers of a card's length can be one (the text rule then checks the shape and
        the Luhn sum), so the common numbers cost one comparison.
        """
        if value.__class__ is not int or not 10**12 <= value < 10**19 or not self._card_rule:
            return value
        text = str(value)
        masked = self.redact_text(text)
        return value if masked == text else masked

    def mask_sensitive(self, value: Any) -> Any:
        """What a credential-named record attribute's value becomes: ``[REDACTED]``, unless it
        is None, a boolean or allowed (booleans and None say nothing secret)."""
        if value is None or value.__class__ is bool or self._is_allowed(str(value)):
            return value
        return REDACTED

    def gate_pattern(self) -> str | None:
        """An RE2 pattern found in every string that :meth:`redact_text` would change.

        Made for scanning a whole column at once (RE2 runs a DFA over the bytes, with no
        per-candidate backtracking), so that only the few strings it flags take the rules;
        any other string is known to come out unchanged. Each enabled rule contributes a
        necessary condition of its own regex (lookarounds dropped; Python's Unicode ``\\d``
        and case-insensitive letters widened to admit every non-ASCII character), so the
        pattern over-approximates, never under-. ``None`` when a ``deny`` pattern is
        configured: a user's Python regex has no RE2 equivalent, so every string is a
        candidate. (Returned as text: this module imports only the standard library.)
        """
        return self._gate if self._gate is None or self._gate else r"\b\B"  # \b\B: never

    # ------------------------------------------------------------------ records and mappings

    def _mask_keys_and_list_strings(self, attributes: dict[str, Any]) -> list[str]:
        """Mask credential-named attributes; return the keys of strings not yet known clean."""
        # Events from one source share their key set, so the per-key decisions are cached
        # per key tuple: (keys to mask whole, keys whose strings go through the text rules).
        keys = tuple(attributes)
        plan = self._keyset_cache.get(keys)
        if plan is None:
            sensitive = tuple(k for k in keys if self.is_sensitive_key(k))
            scanned = tuple(k for k in keys if k not in sensitive and not self._is_id_key(k))
            plan = (sensitive, None if len(scanned) == len(keys) else scanned)
            if len(self._keyset_cache) >= _KEY_CACHE_MAX:
                self._keyset_cache.clear()
            self._keyset_cache[keys] = plan
        sensitive, scanned = plan
        for key in sensitive:
            attributes[key] = self.mask_sensitive(attributes[key])
        if self._card_rule:  # 0.35 us for five attributes: what masking numbers costs here
            for key, value in attributes.items():
                if value.__class__ is int and value >= 1_000_000_000_000:
                    attributes[key] = self.mask_number(value)
        clean = self._clean
        if scanned is None:
            return [k for k, v in attributes.items() if v.__class__ is str and v and v not in clean]
        return [k for k in scanned if (v := attributes[k]).__class__ is str and v and v not in clean]

    def _redact_new_text(self, text: str) -> str:
        """redact_text for a string already known not to be in the clean cache."""
        groups = self._candidate_rules(text)
        if groups is None:
            self._remember_clean(text)
            return text
        return self._apply_and_remember(text, groups)

    def _is_id_key(self, key: str) -> bool:
        """``*_id`` keys are left alone (ids are what logs are correlated by), unless the id
        names a credential: ``aws_access_key_id`` or ``api_key_id`` hold a key's public half,
        which the text rules still mask (``AKIA[REDACTED]``), so their values get scanned."""
        words = [w.lower() for w in _WORD_SPLIT.split(key) if w]
        if not words or words[-1] not in _ID_WORDS:
            return False
        sensitive_words = _SENSITIVE_WORDS | self._extra_words
        stem = words[:-1]
        for i, word in enumerate(stem):
            if word == "session":  # session ids correlate requests; they are not credentials
                continue
            if word == "key" or word in sensitive_words or word.endswith(_SENSITIVE_SUFFIXES):
                return False
            if i and stem[i - 1] + word in sensitive_words:
                return False
        return True

    def _redact_value(self, key: Any, value: Any) -> Any:
        if key is not None and not isinstance(value, Mapping | list | tuple) and self._is_id_key(str(key)):
            return value
        if key is not None and self.is_sensitive_key(str(key)):
            if value is None or value.__class__ is bool:
                return value
            if isinstance(value, str) and self._is_allowed(value):
                return value
            return REDACTED
        return self._redact_any(value)

    def _redact_any(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if value.__class__ is int:
            return self.mask_number(value)
        if isinstance(value, Mapping):
            return {k: self._redact_value(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._redact_any(v) for v in value]
        return value

    def _classify_key(self, key: str) -> bool:
        lowered = key.lower()
        if lowered in self._safe_keys or lowered.rsplit(".", 1)[-1] in self._safe_keys:
            return False
        if lowered in self._extra_words:
            return True
        words = [w.lower() for w in _WORD_SPLIT.split(key) if w]
        if not words or words[-1] in _SAFE_LAST_WORDS:
            return False
        sensitive_words = _SENSITIVE_WORDS | self._extra_words
        for i, word in enumerate(words):
            if word in sensitive_words or word.endswith(_SENSITIVE_SUFFIXES):
                return True
            if i and words[i - 1] + word in sensitive_words:
                return True
        return False

    # ------------------------------------------------------------------ text

    def _remember_clean(self, text: str) -> None:
        if len(text) <= _CLEAN_CACHE_MAX_LEN:
            if len(self._clean) >= _CLEAN_CACHE_MAX:
                self._clean.clear()
            self._clean.add(text)

    def _candidate_rules(self, text: str) -> set[str] | None:
        """Rules whose anchors occur in ``text``, or None when no rule can match."""
        prefilter = self._prefilter
        first = prefilter.search(text) if prefilter is not None else None
        digit_prefilter = self._digit_prefilter
        digit_hit = digit_prefilter is not None and digit_prefilter.search(text) is not None
        deny_hit = self._deny is not None and self._deny.search(text) is not None
        if first is None and not digit_hit and not deny_hit:
            return None
        names: set[str] = {"deny"} if deny_hit else set()
        if digit_hit:
            names |= self._digit_rules
        if first is not None:
            group_rules = self._group_rules
            names |= group_rules[first.lastgroup or ""]
            for m in prefilter.finditer(text, first.end()):  # type: ignore[union-attr]
                names |= group_rules[m.lastgroup or ""]
        return names

    def _apply_and_remember(self, text: str, names: set[str]) -> str:
        """:meth:`_apply`, remembering ``text`` as clean when no rule changed it: a line that
        looks like a candidate without holding a secret ("...the following exception:" in
        every chained traceback, ``key: value`` prose) recurs like any other."""
        redacted = self._apply(text, names)
        if redacted == text:
            self._remember_clean(text)
            return text
        return redacted

    def _apply(self, text: str, names: set[str]) -> str:
        if names <= _AT_RULES:
            # Only the '@' rules (an e-mail address, the usual case): over the words that
            # hold an '@', not the whole text (see _sub_around_at).
            at_rules = self._at_rules
            if len(names) != len(at_rules):
                at_rules = [rule for rule in at_rules if rule.name in names]
            return _sub_around_at(at_rules, text)
        for rule in self._rules:
            if rule.name in names:
                text = rule.pattern.sub(rule.replace, text)
        return text

    def _is_allowed(self, text: str) -> bool:
        return self._allow is not None and self._allow.fullmatch(text) is not None

    # ------------------------------------------------------------------ prefilter

    def _build_prefilter(
        self, keywords: tuple[str, ...], enabled: set[str]
    ) -> tuple[re.Pattern[str] | None, dict[str, frozenset[str]]]:
        anchors = [a for a in _anchors(keywords) if a.rules & enabled]
        # The digit anchors (one per digit, all with the same tail) become a regex of their
        # own, led by a character class: the engine then scans for digits and runs one tail
        # per digit, where the shared regex would try each of its ~30 alternatives at every
        # digit of every id and path. Two searches, but about 40% less time per string.
        digits = [a for a in anchors if a.first in "0123456789"]
        self._digit_prefilter: re.Pattern[str] | None = None
        self._digit_rules: frozenset[str] = frozenset()
        if digits and len({(a.rest, a.rules) for a in digits}) == 1:
            chars = "".join(sorted(a.first for a in digits))
            self._digit_prefilter = re.compile(f"[{chars}](?={digits[0].rest})")
            self._digit_rules = digits[0].rules & enabled
            anchors = [a for a in anchors if a not in digits]
        if not anchors:
            return None, {}
        by_first: dict[str, list[_Anchor]] = {}
        for anchor in anchors:
            by_first.setdefault(anchor.first, []).append(anchor)
        # Each top-level alternative starts with a literal, so the regex engine scans for the
        # set of first characters and tries the rest only there. The rest sits in a lookahead
        # so every match consumes one character: finditer then visits every candidate
        # position, and anchors starting inside another anchor's text are not skipped. Where
        # several anchors share a first character, a hit gates all of their rules.
        alternatives = []
        group_rules: dict[str, frozenset[str]] = {}
        for i, (first, group) in enumerate(by_first.items()):
            name = f"g{i}"
            tails = "|".join(a.rest for a in group)
            lookahead = f"(?={tails})" if all(a.rest for a in group) else ""
            alternatives.append(f"{re.escape(first)}{lookahead}(?P<{name}>)")
            group_rules[name] = frozenset().union(*(a.rules for a in group)) & enabled
        return re.compile("|".join(alternatives)), group_rules

    # ------------------------------------------------------------------ rules

    def _build_rules(self, keywords: tuple[str, ...]) -> list[_Rule]:
        token_prefix = r"(?<![A-Za-z0-9_-])"
        token_end = r"(?![A-Za-z0-9_-])"
        rules = [
            _Rule(
                "private_key",
                re.compile(
                    r"(-----BEGIN ([A-Z0-9 ]{0,40}?)PRIVATE KEY(?: BLOCK)?-----)"
                    r"(.*?)(-----END [A-Z0-9 ]{0,40}?PRIVATE KEY(?: BLOCK)?-----|\Z)",
                    re.DOTALL,
                ),
                self._replace_private_key,
            ),
            _Rule(
                "jwt",
                re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*(?![\w-])"),
                self._replace_jwt,
            ),
            _Rule(
                "auth_header",
                re.compile(
                    r"(?<![\w-])(Bearer|bearer|BEARER|Basic|BASIC|Digest|Token|Negotiate|NTLM)"
                    r"([ \t]+)([A-Za-z0-9._~+/=-]{8,})"
                ),
                self._replace_auth_header,
            ),
            _Rule(
                "url_credentials",
                re.compile(
                    r"(?<![\w+.-])([A-Za-z][A-Za-z0-9+.-]{1,30}://)([^\s:/?#@\[\]\"'<>]*):([^\s/?#\"'<>]+)@"
                ),
                self._replace_url_credentials,
            ),
            _Rule(
                "sentry_dsn",
                re.compile(r"(?<![\w+.-])(https?://)([0-9a-fA-F]{32})(?=(?::[^\s/?#@]*)?@)"),
                self._replace_group2,
            ),
            _Rule(
                "aws",
                re.compile(
                    r"(?<![A-Za-z0-9])(AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}(?![A-Za-z0-9])"
                    r"|((?i:aws_?secret_?(?:access_?)?key)[\"']?[ \t]?[:=][ \t]*[\"']?)"
                    r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
                ),
                self._replace_aws,
            ),
            _Rule(
                "github",
                re.compile(
                    rf"{token_prefix}(gh[pousr]_)[A-Za-z0-9]{{36,255}}{token_end}|"
                    rf"{token_prefix}(github_pat_)[A-Za-z0-9_]{{22,255}}{token_end}"
                ),
                self._replace_prefix_token,
            ),
            _Rule(
                "slack",
                re.compile(
                    rf"{token_prefix}(xox[abposre]-)[A-Za-z0-9-]{{10,250}}{token_end}"
                    r"|(https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_]+/[A-Za-z0-9_]+/)"
                    r"[A-Za-z0-9_]{8,}"
                ),
                self._replace_prefix_token,
            ),
            _Rule(
                "stripe",
                re.compile(
                    rf"{token_prefix}((?:sk|rk)_(?:live|test)_)[A-Za-z0-9]{{10,247}}{token_end}|"
                    rf"{token_prefix}(whsec_)[A-Za-z0-9]{{20,}}{token_end}"
                ),
                self._replace_prefix_token,
            ),
            _Rule(
                "anthropic",
                re.compile(rf"{token_prefix}(sk-ant-)[A-Za-z0-9_-]{{20,}}"),
                self._replace_prefix_token,
            ),
            _Rule(
                "openai",
                re.compile(rf"{token_prefix}(sk-(?:proj-|svcacct-|admin-)?)(?!ant-)[A-Za-z0-9_-]{{20,}}"),
                self._replace_prefix_token,
            ),
            _Rule(
                "google",
                re.compile(rf"{token_prefix}(AIza)[0-9A-Za-z_-]{{35}}{token_end}"),
                self._replace_prefix_token,
            ),
            _Rule(
                "sendgrid",
                re.compile(rf"{token_prefix}(SG\.)[A-Za-z0-9_-]{{16,32}}\.[A-Za-z0-9_-]{{16,64}}{token_end}"),
                self._replace_prefix_token,
            ),
            _Rule(
                "twilio",
                re.compile(r"(?<![A-Za-z0-9])(SK|AC)[0-9a-f]{32}(?![A-Za-z0-9])"),
                self._replace_prefix_token,
            ),
            _Rule(
                "key_value",
                # Header-like keys whose value is the rest of the line: Cookie, Authorization.
                re.compile(
                    rf"(?<![\w.-]){_key_ending_with(('authorization', 'cookie'))}((?:\\?[\"'])?[ \t]?:[ \t]*)"
                    r"(\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|[^\r\n\"]+)"
                ),
                self._replace_header_value,
            ),
            _Rule(
                "key_value",
                # key (must end with a keyword), optional closing quote (maybe escaped), one
                # optional blank, ':' / '=' / '=>', blanks, then one value token.
                re.compile(
                    rf"(?<![\w.-]){_key_ending_with(keywords)}((?:\\?[\"'])?[ \t]?(?::|=>?)[ \t]*)"
                    r"(\\\"(?:[^\"\\]|\\[^\"])*\\\"|\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"
                    r"|[^\s\"',;&<>(){}\[\]]+)"
                ),
                self._replace_key_value,
            ),
            _Rule(
                "email",
                re.compile(
                    # Letters and digits of any script (jörg@exämple.de, 用户@例子.中国), as
                    # internationalised addresses are personal data just as much.
                    r"(?<![\w.%+*@-])([^\W_][\w.%+-]{0,63})@"
                    r"((?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24})(?![\w-])"
                ),
                self._replace_email,
            ),
            _Rule(
                "card",
                re.compile(r"(?<![\w-])[2-6]\d{3}(?:[ -]?\d{4,6}){1,3}(?:[ -]?\d{1,4})?(?!\w|-\d)"),
                self._replace_card,
            ),
            _Rule(
                "iban",
                re.compile(
                    r"(?<![A-Za-z0-9])[A-Z]{2}\d\d ?[A-Z0-9]{4}(?: ?[A-Z0-9]{4}){1,6}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
                ),
                self._replace_iban,
            ),
            _Rule(
                "phone",
                re.compile(
                    r"(?<![\w+])\+[1-9]\d{0,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,5}(?![\w]|[.-]\d)"
                    r"|(?<![\w)])\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}(?![\w]|[.-]\d)"
                    r"|(?<![\w.+-])[2-9]\d\d([-.])\d{3}\1\d{4}(?![\w]|[.-]\d)"
                ),
                self._replace_phone,
            ),
        ]
        return rules

    # ------------------------------------------------------------------ replacements

    def _replace_private_key(self, m: re.Match[str]) -> str:
        end = m.group(4) or f"-----END {m.group(2)}PRIVATE KEY-----"
        return f"{m.group(1)}{REDACTED}{end}"

    def _replace_jwt(self, m: re.Match[str]) -> str:
        return m.group(0) if self._is_allowed(m.group(0)) else REDACTED_JWT

    def _replace_auth_header(self, m: re.Match[str]) -> str:
        credential = m.group(3)
        # "Basic authentication", "Token expired": prose, not a credential. Real credentials
        # carry a digit, punctuation from their alphabet, or an inner capital.
        looks_secret = any(c.isdigit() or c in "._~+/=-" for c in credential) or any(
            c.isupper() for c in credential[1:]
        )
        if not looks_secret or self._is_allowed(credential):
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}{REDACTED}"

    def _replace_url_credentials(self, m: re.Match[str]) -> str:
        if m.group(3) == "***" or self._is_allowed(m.group(3)):
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}:***@"

    def _replace_group2(self, m: re.Match[str]) -> str:
        if self._is_allowed(m.group(2)):
            return m.group(0)
        return f"{m.group(1)}{REDACTED}"

    def _replace_aws(self, m: re.Match[str]) -> str:
        if self._is_allowed(m.group(0)):
            return m.group(0)
        if m.group(1):
            return f"{m.group(1)}{REDACTED}"
        return f"{m.group(2)}{REDACTED}"

    def _replace_prefix_token(self, m: re.Match[str]) -> str:
        if self._is_allowed(m.group(0)):
            return m.group(0)
        prefix = next(g for g in m.groups() if g is not None)
        return f"{prefix}{REDACTED}"

    @staticmethod
    def _unquote(value: str) -> tuple[str, str]:
        if value.startswith('\\"') and len(value) >= 4:
            return '\\"', value[2:-2]
        if value[:1] in "\"'" and len(value) >= 2:
            return value[0], value[1:-1]
        return "", value

    def _is_masked(self, inner: str) -> bool:
        return inner in _ALREADY_MASKED or REDACTED in inner or set(inner) <= {"*"} or self._is_allowed(inner)

    def _replace_header_value(self, m: re.Match[str]) -> str:
        key, sep, value = m.group(1), m.group(2), m.group(3)
        if key.lower() in self._safe_keys:
            return m.group(0)
        quote, inner = self._unquote(value)
        stripped = inner.rstrip()
        if self._is_masked(stripped.strip()):
            return m.group(0)
        trailing = inner[len(stripped) :]
        scheme, _, credential = stripped.partition(" ")
        if scheme.lower() in _AUTH_SCHEMES and credential.strip():
            if self._is_masked(credential.strip()):
                return m.group(0)
            masked = f"{scheme} {REDACTED}"
        else:
            masked = REDACTED
        return f"{key}{sep}{quote}{masked}{trailing}{quote}"

    def _replace_key_value(self, m: re.Match[str]) -> str:
        key, sep, value = m.group(1), m.group(2), m.group(3)
        if key.lower() in self._safe_keys:
            return m.group(0)
        quote, inner = self._unquote(value)
        if self._is_masked(inner) or (not quote and inner.lower() in _AUTH_SCHEMES):
            # Schemes: the auth_header rule already masked the credential that follows.
            return m.group(0)
        if not quote and m.string.startswith(REDACTED[:-1], m.end()):
            return m.group(0)  # "ghp_[REDACTED]": a token rule already masked it, keeping its kind

        return f"{key}{sep}{quote}{REDACTED}{quote}"

    def _replace_email(self, m: re.Match[str]) -> str:
        start = m.start()
        if (start >= 3 and m.string[start - 3 : start] == "://") or (
            self._allow is not None and self._allow.fullmatch(m.group(0)) is not None
        ):
            return m.group(0)  # URL userinfo, not a mailbox (or an allowed address)
        local, domain = m.group(1, 2)
        return f"{local[0]}***@{domain}"

    def _replace_card(self, m: re.Match[str]) -> str:
        text = m.group(0)
        digits = text.replace(" ", "").replace("-", "")
        if not 13 <= len(digits) <= 19 or not luhn_valid(digits) or self._is_allowed(text):
            return text
        return _mask_keep_last(text, 4)

    def _replace_iban(self, m: re.Match[str]) -> str:
        text = m.group(0)
        if not iban_valid(text.replace(" ", "")) or self._is_allowed(text):
            return text
        return _mask_keep_last(text, 4, keep_first=2, alnum=True)

    def _replace_phone(self, m: re.Match[str]) -> str:
        text = m.group(0)
        digits = sum(c.isdigit() for c in text)
        if not 8 <= digits <= 15 or self._is_allowed(text):
            return text
        return _mask_keep_last(text, 4)

    def _replace_deny(self, m: re.Match[str]) -> str:
        return m.group(0) if self._is_allowed(m.group(0)) else REDACTED


_KEY_CHARS = re.compile(r"[\w.-]+")

#: Rules whose every match holds an '@' and no whitespace, and looks at most at the one
#: character on either side of it (``_replace_email`` at the three before it, for "://").
_AT_RULES: Final = frozenset({"email", "url_credentials", "sentry_dsn"})
_NON_SPACE = re.compile(r"\S*")
#: The :data:`_AT_RULES` rules whose every match holds "://" (a URL with credentials).
_SCHEME_RULES: Final = frozenset({"url_credentials", "sentry_dsn"})


def _sub_around_at(rules: list[_Rule], text: str) -> str:
    """``rule.pattern.sub(rule.replace, text)`` for each of ``rules`` (all :data:`_AT_RULES`)
    in turn, run only over the whitespace-delimited words that hold an '@'.

    The same result: a match lies inside one such word, and what its lookarounds see beyond
    the word is whitespace or the end of the text, which they treat alike; no replacement
    adds whitespace or an '@', so the words stay the same from one rule to the next. The
    regexes are the costly part (each tries every position it is given, the e-mail one
    with up to 64 characters of local part at each), so on a log line with one address
    among 100 characters this is about three times less work.
    """
    at = text.find("@")
    if at < 0:
        return text
    pieces = []
    done = 0
    while at >= 0:
        start = at - _NON_SPACE.match(text[done:at][::-1]).end()
        end = _NON_SPACE.match(text, at).end()
        pieces.append(text[done:start])
        word = text[start:end]
        has_scheme = "://" in word
        for rule in rules:
            if has_scheme or rule.name not in _SCHEME_RULES:
                word = rule.pattern.sub(rule.replace, word)
        pieces.append(word)
        done = end
        at = text.find("@", end)
    pieces.append(text[done:])
    return "".join(pieces)


def _key_ending_with(keywords: Iterable[str]) -> str:
    """Group 1 of the key_value rules: a key (a run of ``[\\w.-]``) ending with a keyword.

    The separator after the key cannot start with a key character, so the key is always the
    whole run. Matching the run first and then checking its end with one fixed-width
    lookbehind per keyword finds exactly what ``[\\w.-]*?(?i:keyword|...)`` finds, in time
    linear in the run (the lazy form tries every keyword at every character of every run:
    ~0.2 ms for a 200-character access-log line). Keywords with other characters (a
    configured ``extra_sensitive_keys`` entry with a blank) keep the lazy form.
    """
    words = sorted(set(keywords), key=len, reverse=True)
    if all(_KEY_CHARS.fullmatch(k) for k in words):
        # A one-character check first (most keys end with none of the keywords' last letters),
        # then one lookbehind per keyword length (a lookbehind's alternatives share a width).
        last = "".join(sorted({re.escape(k[-1]) for k in words}))
        by_length: dict[int, list[str]] = {}
        for k in words:
            by_length.setdefault(len(k), []).append(re.escape(k))
        exact = "|".join(f"(?<=(?i:{'|'.join(group)}))" for group in by_length.values())
        return f"((?>[\\w.-]+)(?<=(?i:[{last}]))(?:{exact}))"
    return f"([\\w.-]*?(?i:{'|'.join(re.escape(k) for k in words)}))"


def _keyword_lookbehinds(keywords: Iterable[str], sep: str) -> str:
    """A cheap superset test, run just after ``sep``, for "a keyword ended right before it".

    Checking every keyword at every ``:`` costs more than the rules it guards, so this checks
    one character class per position over the keywords' last three letters (either case),
    followed by what the key_value rule allows between key and separator: a closing quote
    (maybe escaped) and one blank. A digit right before the separator (``12:00``) is rejected
    first, in one step.
    """
    positions: dict[int, list[set[str]]] = {}
    for word in keywords:
        tail = word[-3:]
        sets = positions.setdefault(len(tail), [set() for _ in tail])
        for i, ch in enumerate(tail):
            sets[i] |= {ch.lower(), ch.upper()}
    trailers = ["", "[\"' \t]", "(?:[\"'][ \t]|\\\\[\"'])", "\\\\[\"'][ \t]"]
    lookbehinds = [
        "(?<="
        + "".join(f"[{re.escape(''.join(sorted(chars)))}]" for chars in sets)
        + f"{trailer}{re.escape(sep)})"
        for _, sets in sorted(positions.items())
        for trailer in trailers
    ]
    gate = "" if any(w[-1:].isdigit() for w in keywords) else f"(?<!\\d{re.escape(sep)})"
    return f"{gate}(?:{'|'.join(lookbehinds)})"


def _anchors(keywords: tuple[str, ...]) -> list[_Anchor]:
    """The prefilter's alternatives. Each must be implied by its rules' full regexes.

    Listed roughly from the most to the least frequent first character in ordinary log text,
    because the regex engine tries the alternatives in order at every candidate character.
    """

    def rs(*names: str) -> frozenset[str]:
        return frozenset(names)

    anchors: list[_Anchor] = []
    # Digits are the most common candidates, so their test is one shared, cheap-to-fail
    # lookahead: card (4 digits, optional separator, 4 digits), NANP phone (ddd-ddd-dddd) and
    # IBAN (two capitals, two check digits - the candidate is the first - then 4 alnum).
    # The boundary lookbehinds mirror the rules' own and keep UUIDs and hex ids out.
    # The first lookbehind drops, in one cheap step, the digits that cannot start any of
    # them: card and phone numbers start after a non-word character (not after a letter,
    # digit, '_' or '-'), an IBAN's check digits after two capitals. Most digits in log
    # text sit inside ids, hex strings and paths and stop there.
    digit_tail = (
        r"(?<![a-z0-9_-][0-9])"
        r"\d(?:\d(?:\d(?<![\w-]\d{4})[ -]?\d{4}|(?<![\w.+-]\d{3})[-.]\d{3}[-.]\d{4})"
        r"|(?<=[A-Z]{2}\d\d) ?[A-Z0-9]{4})"
    )
    anchors += [_Anchor(d, digit_tail, rs("card", "phone", "iban")) for d in "0123456789"]
    for sep in ":=":
        # aws_secret_access_key=... ends with a keyword too, so the same anchor gates it.
        anchors.append(_Anchor(sep, _keyword_lookbehinds(keywords, sep), rs("key_value", "aws")))
    anchors += [
        _Anchor("-", "----BEGIN ", rs("private_key")),
        _Anchor("-", r"(?<=sk-)", rs("anthropic", "openai")),
        _Anchor("_", r"(?<=gh[pousr]_)", rs("github")),
        _Anchor("_", r"(?<=github_)pat_", rs("github")),
        _Anchor("_", r"(?<=[sr]k_)(?:live|test)_", rs("stripe")),
        _Anchor("_", r"(?<=whsec_)", rs("stripe")),
        _Anchor("@", "", rs("email", "url_credentials", "sentry_dsn")),
        _Anchor("A", r"(?:KIA|SIA|GPA|IDA|ROA|IPA|NPA|NVA)", rs("aws")),
        _Anchor("A", r"Iza", rs("google")),
        _Anchor("A", r"C[0-9a-f]", rs("twilio")),
        _Anchor("S", r"K[0-9a-f]", rs("twilio")),
        _Anchor("S", r"G\.", rs("sendgrid")),
        _Anchor("B", r"(?:earer|EARER|asic|ASIC)[ \t]", rs("auth_header")),
        _Anchor("T", r"oken[ \t]", rs("auth_header")),
        _Anchor("D", r"igest[ \t]", rs("auth_header")),
        _Anchor("N", r"(?:egotiate|TLM)[ \t]", rs("auth_header")),
        _Anchor("J", r"(?<=eyJ)", rs("jwt")),
        _Anchor("+", r"[1-9]", rs("phone")),
        _Anchor("(", r"\d{3}\)", rs("phone")),
        _Anchor("b", r"earer[ \t]", rs("auth_header")),
        _Anchor("k", r"(?<=hooks\.slack)\.com/", rs("slack")),
        _Anchor("x", r"ox[abposre]-", rs("slack")),
    ]
    return anchors


#: Inside an RE2 character class: every non-ASCII character. Python's ``\d`` and
#: case-insensitive letters match some non-ASCII characters too (Arabic-Indic digits, the long
#: s, the Kelvin sign), and which ones depends on the Unicode version; admitting all of them
#: keeps the gate a superset whatever either engine knows.
_RE2_NON_ASCII: Final = r"\x{80}-\x{10FFFF}"
_RE2_DIGIT: Final = rf"[0-9{_RE2_NON_ASCII}]"
#: What the key_value rules allow between the keyword and ':' / '=': a closing quote (maybe
#: escaped) and one blank.
_RE2_KEY_SEPARATOR: Final = r"""(?:\\?["'])?[ \t]?[:=]"""


def _re2_caseless(word: str) -> str:
    """RE2 text that matches at least what Python's ``(?i:word)`` matches."""
    out = []
    for ch in word:
        if ch.isascii() and ch.isalpha():
            out.append(f"[{ch.lower()}{ch.upper()}{_RE2_NON_ASCII}]")
        elif not ch.isascii():
            out.append(f"[A-Za-z{_RE2_NON_ASCII}]")
        elif ch.isdigit():
            out.append(ch)
        else:
            out.append(f"\\x{{{ord(ch):02x}}}")
    return "".join(out)


def _re2_gates(keywords: tuple[str, ...]) -> dict[str, str]:
    """Per rule, an RE2 pattern that every match of the rule's regex contains.

    Each is the rule's regex with its lookarounds dropped (a weaker condition), shortened
    to a prefix, or widened (see ``_RE2_NON_ASCII``); keep them in step with ``_build_rules``.
    A property test checks that no string the rules change escapes the gate.
    """
    d = _RE2_DIGIT
    ci = _re2_caseless
    keyword = "|".join(ci(k) for k in (*keywords, "authorization", "cookie"))
    aws_key = f"{ci('aws')}_?{ci('secret')}_?(?:{ci('access')}_?)?{ci('key')}"
    return {
        "private_key": "-----BEGIN ",
        "jwt": r"eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.",
        "auth_header": r"(?:Bearer|bearer|BEARER|Basic|BASIC|Digest|Token|Negotiate|NTLM)[ \t]+[A-Za-z0-9._~+/=\-]{8}",
        "url_credentials": r"""://[^\s:/?#@\[\]"'<>]*:[^\s/?#"'<>]+@""",
        "sentry_dsn": r"https?://[0-9a-fA-F]{32}",
        "aws": rf"""(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{{16}}|{aws_key}["']?[ \t]?[:=]""",
        "github": r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22}",
        "slack": (
            r"xox[abposre]-[A-Za-z0-9\-]{10}"
            r"|https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_]+/[A-Za-z0-9_]+/[A-Za-z0-9_]{8}"
        ),
        "stripe": r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10}|whsec_[A-Za-z0-9]{20}",
        "anthropic": r"sk-ant-[A-Za-z0-9_\-]{20}",
        "openai": r"sk-[A-Za-z0-9_\-]{20}",
        "google": r"AIza[0-9A-Za-z_\-]{35}",
        "sendgrid": r"SG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{16}",
        "twilio": r"(?:SK|AC)[0-9a-f]{32}",
        "key_value": f"(?:{keyword}){_RE2_KEY_SEPARATOR}",
        "email": r"@[\pL\pN][\pL\pN_.\-]*\.\pL{2}",
        "card": rf"[2-6]{d}{{3}}[ \-]?{d}{{4}}",
        "iban": rf"[A-Z]{{2}}{d}{{2}} ?[A-Z0-9]{{4}} ?[A-Z0-9]{{4}}",
        "phone": rf"\+[1-9]|\({d}{{3}}\)[ .\-]?{d}{{3}}[ .\-]{d}{{4}}|[2-9]{d}{{2}}[\-.]{d}{{3}}[\-.]{d}{{4}}",
    }

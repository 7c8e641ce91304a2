"""The redaction shortcuts the SDK's JSON formatter relies on give exactly the plain results.

- the '@' rules run only over the words that hold an '@' (stackwatch.redaction._sub_around_at);
- the digit anchors are a regex of their own, led by a boundary check;
- ``Redactor.redact_texts`` (one prefilter pass for several strings) equals ``redact_text``
  on each;
- a text no rule changed is remembered as clean;
- the formatter redacts the request id and caches one event per record and builder.
"""

from __future__ import annotations

import copy
import logging
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.redaction import _AT_RULES, RULE_NAMES, Redactor, _sub_around_at
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.logging import EventBuilder, LogContext

R = Redactor()

AT_FRAGMENTS = [
    "jane.doe@example.com", "j@x.io", "postgres://app:s3cret@db:5432/crm", "https://u:p@h.example/x",
    "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/2", "@", "@@", "a@", "@b.com",
    "mailto:bob@corp.test", "x://y:z@", "user@host", "é@example.com", "a.b+c%d@sub.example.org",
    "(ops@example.com)", "<li@corp.test>", "-x@y.zz", "*@corp.test", "ftp://:pw@h", "https://",
]
SPACES = [" ", "\n", "\t", "\u00a0", "\u2003", "\n\x00\n", "", ",", ";", "=", ":", "/"]
DIGIT_FRAGMENTS = [
    "4242 4242 4242 4242", "4111-1111-1111-1111", "5555555555554444", "415-555-2671", "415.555.2671",
    "(415) 555-2671", "+14155552671", "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432",
    "req-0074513021da8978", "172.57.190.121", "/api/leads/48213", "v1.2.3", "2026-11-23T08:00:00Z",
    "pay_377b9aa2bb2edb20", "AB12", "x4242424242424242", "-4242424242424242", "_5555555555554444",
    "A4242 4242 4242 4242", "١٢٣٤٥٦٧٨٩٠١٢٣",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(AT_FRAGMENTS + SPACES + ["x", "A1", "é"]), max_size=10))
def test_at_rules_over_words_equal_the_whole_text(parts: list[str]) -> None:
    text = "".join(parts)
    rules = [rule for rule in R._rules if rule.name in _AT_RULES]
    expected = text
    for rule in rules:
        expected = rule.pattern.sub(rule.replace, expected)
    assert _sub_around_at(rules, text) == expected
    for rule in rules:
        assert _sub_around_at([rule], text) == rule.pattern.sub(rule.replace, text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(DIGIT_FRAGMENTS + SPACES + AT_FRAGMENTS[:3] + ["a", "Z", "-", "_"]), max_size=8))
def test_prefilter_with_its_digit_regex_hides_no_match(parts: list[str]) -> None:
    text = "".join(parts)
    redactor = Redactor()
    assert redactor.redact_text(text) == redactor._apply(text, set(RULE_NAMES))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("0123456789 -.+()@:=_aAZxk\n\x00")), max_size=40), max_size=5))
def test_prefilter_on_digit_heavy_noise(texts: list[str]) -> None:
    redactor = Redactor()
    for text in texts:
        assert redactor.redact_text(text) == redactor._apply(text, set(RULE_NAMES))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(AT_FRAGMENTS + DIGIT_FRAGMENTS + ["Lead created", "password=hunter2",
                                                                  "Bearer abcdef123456", "\n\x00\x00\n"]),
                max_size=6))
def test_redact_texts_equals_redact_text_on_each(texts: list[str]) -> None:
    redactor = Redactor()
    one_by_one = [Redactor().redact_text(text) for text in texts]
    together = redactor.redact_texts(texts)
    if together is None:
        assert one_by_one == texts
    else:
        assert together == one_by_one
    # And again, now that some are known clean.
    again = redactor.redact_texts(texts)
    assert (texts if again is None else again) == one_by_one


def test_a_candidate_no_rule_changes_is_remembered() -> None:
    redactor = Redactor()
    line = "\nThe above exception was the direct cause of the following exception:\n\n"
    assert redactor._candidate_rules(line) is not None  # "...exception:" looks like "session:"
    assert line not in redactor._clean
    assert redactor.redact_text(line) == line
    assert line in redactor._clean
    secret = "session: abcdef123456"
    assert redactor.redact_text(secret) != secret and secret not in redactor._clean


def test_formatter_redacts_the_request_id_with_the_record() -> None:
    builder = EventBuilder(SDKConfig(service="crm"))
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "Failed login for %s", ("li@corp.test",), None)
    record.__dict__.update(request_id="req-jane.doe@example.com", ip_address="10.1.2.3", card="4242 4242 4242 4242")
    event = builder.build(record)
    assert event["request_id"] == "r***@example.com"  # the whole id is the local part
    assert event["message"] == "Failed login for l***@corp.test"
    assert event["context"] == {"ip_address": "10.1.2.3", "card": "**** **** **** 4242"}


def test_every_handler_of_a_record_gets_the_same_event() -> None:
    builder = EventBuilder(SDKConfig(service="crm"))
    other = EventBuilder(SDKConfig(service="billing"))
    seen: list[dict[str, object]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(builder.build(record))

    log = logging.getLogger("stackwatch.test.same-event")
    log.propagate = False
    log.handlers = [Collect(), Collect(), Collect()]
    try:
        with LogContext(request_id="req-7"):
            log.warning("charge failed for %s", "li@corp.test", extra={"plan": "pro"})
    finally:
        log.handlers = []
    assert len(seen) == 3 and seen[0] is seen[1] is seen[2]
    assert seen[0]["request_id"] == "req-7" and seen[0]["message"] == "charge failed for l***@corp.test"
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello", None, None)
    first = builder.build(record)
    assert other.build(record)["service"] == "billing"  # another builder builds its own
    assert builder.build(record) is first
    # A record built in another thread in between does not disturb this thread's.
    thread = threading.Thread(target=builder.build, args=(logging.LogRecord("t", 20, "f", 1, "x", None, None),))
    thread.start()
    thread.join()
    assert builder.build(record) is first
    # Nothing is added to the record (a copy, as a QueueHandler makes, is a record of its own).
    assert not {"_stackwatch_event", "_stackwatch_builder"} & set(record.__dict__)
    assert builder.build(copy.copy(record)) == first

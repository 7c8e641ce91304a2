"""Grammar errors name their line, column and token, as Prometheus's do.

The locator runs only when promql-parser refuses a query, but it must never blame a query
that is valid: every expression of the conformance corpora that the parser accepts is walked
here and must pass.
"""

from __future__ import annotations

import promql_parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from promql_script import _EVAL_INSTANT, _EVAL_RANGE, corpus_files

from stackwatch.query.promql._ast import parse
from stackwatch.query.promql._syntax import locate_syntax_error
from stackwatch.query.promql.errors import ParseError


def _corpus_expressions() -> list[str]:
    out: list[str] = []
    for _name, path, _delayed in corpus_files():
        for line in path.read_text().splitlines():
            line = line.strip()
            m = _EVAL_INSTANT.match(line) or _EVAL_RANGE.match(line)
            if m:
                out.append(m.group(m.lastindex or 0))
    return out


def test_no_valid_corpus_query_is_blamed() -> None:
    walked = 0
    for expr in _corpus_expressions():
        try:
            promql_parser.parse(expr)
        except BaseException:  # pyo3 panics are BaseException
            continue
        assert locate_syntax_error(expr) is None, expr
        walked += 1
    assert walked > 1000


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("rate(http_requests_total[5m]) +", "1:32: parse error: unexpected end of input"),
        ('up{job=}', '1:8: parse error: unexpected "}" in label matching, expected string'),
        ('up{job="a" instance="b"}', '1:12: parse error: unexpected identifier "instance" in label matching, '
                                     'expected "," or "}"'),
        ("sum by (route code) (x)", '1:15: parse error: unexpected identifier "code" in grouping opts, '
                                    'expected "," or ")"'),
        ("sum(x) by", '1:10: parse error: unexpected end of input in grouping opts, expected "("'),
        ("topk(5 x)", '1:8: parse error: unexpected identifier "x" in aggregation, expected "," or ")"'),
        ("x @ start", '1:5: parse error: unexpected identifier "start" in @, expected timestamp'),
        ("sum(rate(x[5m]))\n  > 0.5 and", "2:12: parse error: unexpected end of input"),
        ("up offset 5m 3", '1:14: parse error: unexpected number "3"'),
    ],
)
def test_grammar_errors_say_where(query: str, message: str) -> None:
    with pytest.raises(ParseError) as err:
        parse(query)
    assert str(err.value) == message


def test_the_parsers_own_specific_messages_stay() -> None:
    with pytest.raises(ParseError, match="expected type matrix in call to function 'rate'"):
        parse("rate(up)")
    with pytest.raises(ParseError, match="unclosed left parenthesis"):
        parse("sum(rate(x[5m])")


_PIECES = ["x", "up", "sum", "by", "(", ")", "{", "}", "[", "]", "5m", ":", ",", "+", "offset", "@", "1",
           '"a"', "=", "=~", "and", "bool", "on", "group_left", "rate", " ", "\n", "'", "#", "-", "start()"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14))
def test_the_locator_never_raises(pieces: list[str]) -> None:
    query = "".join(pieces)
    located = locate_syntax_error(query)
    assert located is None or located.split(": parse error: ", 1)[0].replace(":", "").isdigit()

"""JSON from clients: whatever text arrives, the parser returns a value within the limits or a named refusal."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitgate.errors import InvalidRequest
from fitgate.json_input import JsonLimits, load_json

LIMITS = JsonLimits(max_depth=8, max_number_chars=24, max_chars=4096)
PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _hostile(draw: st.DrawFn) -> str:
    """Documents built to break a parser: deep nesting, long numbers, constants JSON does not have, cut-offs."""
    depth = draw(st.integers(1, 20_000))
    digits = draw(st.integers(1, 10_000))
    return draw(
        st.sampled_from(
            [
                "[" * depth + "]" * depth,
                '{"a":' * depth + "1" + "}" * depth,
                "[" * depth,
                "9" * digits,
                "-0." + "1" * digits,
                "1e" + "9" * digits,
                "[NaN]",
                '{"x": Infinity}',
                "-Infinity",
                '"\\ud800"',
                '{"a": 1,}',
                "\x00",
            ]
        )
    )


@PROPERTY
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps), st.composite(_hostile)()))
def test_any_text_parses_within_the_limits_or_is_refused_by_name(text: str) -> None:
    # the large-document limits let 20,000-deep nesting reach the parser (the small ones refuse it by length)
    for limits in (LIMITS, JsonLimits(max_depth=8, max_chars=1 << 20)):
        try:
            value = load_json(text, "the field", InvalidRequest, limits)
        except InvalidRequest as exc:
            assert str(exc).startswith("the field "), str(exc)
            continue
        assert _depth(value) <= limits.max_depth
        assert len(text) <= limits.max_chars


@PROPERTY
@given(json_values)
def test_ordinary_json_within_the_limits_reads_back_as_it_was_written(value: Any) -> None:
    text = json.dumps(value)
    if _depth(value) > LIMITS.max_depth or len(text) > LIMITS.max_chars:
        return
    if any(len(t) > LIMITS.max_number_chars for t in _number_literals(value)):
        return
    assert load_json(text, "the field", InvalidRequest, LIMITS) == value


def _number_literals(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _number_literals(v)]
    if isinstance(value, list):
        return [n for v in value for n in _number_literals(v)]
    return [json.dumps(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * 2_000 + "]" * 2_000, "deeper than the limit of 8"),
        ("[[[[[[[[[1]]]]]]]]]", "deeper than the limit of 8"),
        ("9" * 4_000, "a number of 4,000 characters, over the limit of 24"),
        ("[NaN]", "NaN, which is not a JSON number"),
        ("x" * 5_000, "5,000 characters, over the limit of 4,096"),
        ("{'a': 1}", "is not valid JSON (Expecting property name enclosed in double quotes at character 1)"),
    ],
    ids=["2,000 deep", "one past the depth", "4,000 digits", "NaN", "too long", "single quotes"],
)
def test_each_limit_is_named_in_its_refusal(text: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(words)):
        load_json(text, "the field", InvalidRequest, LIMITS)

"""JSON from clients, parsed within limits: every way a document can break the parser is a named refusal.

Python's ``json`` turns hostile documents into errors that are not ``JSONDecodeError``: nesting
deeper than the interpreter's recursion limit raises ``RecursionError``, an integer of more than
4,300 digits ``ValueError`` (the integer-string conversion limit). This module refuses them, and
documents over a depth, size or number-length limit, with a message that says which limit and what
to send instead. Callers choose the error class (a 422 of their own kind).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fitgate.errors import FitgateError


@dataclass(frozen=True)
class JsonLimits:
    """The limits one JSON document is parsed under (FITGATE_JSON_* settings; defaults here)."""

    max_depth: int = 32
    """Arrays and objects nested in each other: fitgate's own documents use 2."""
    max_number_chars: int = 64
    """Characters of one number literal: a float needs at most 25, an int64 20."""
    max_chars: int = 1 << 20
    """Characters of one document: a JSONL line (a form field has its own, smaller setting)."""


DEFAULT_LIMITS = JsonLimits()


class _Refused(ValueError):
    pass


def _number(limit: int, convert: type[int] | type[float]) -> Any:
    def parse(literal: str) -> int | float:
        if len(literal) > limit:
            raise _Refused(f"a number of {len(literal):,} characters, over the limit of {limit}")
        return convert(literal)

    return parse


def _not_json(literal: str) -> Any:
    raise _Refused(f"{literal}, which is not a JSON number")


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (iterative: a deep document must not recurse here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(text: str, what: str, error: type[FitgateError], limits: JsonLimits = DEFAULT_LIMITS) -> Any:
    """Parse ``text`` (named ``what`` in messages) or raise ``error`` saying what is wrong and what to send."""
    if len(text) > limits.max_chars:
        raise error(f"{what} has {len(text):,} characters, over the limit of {limits.max_chars:,}; send less")
    try:
        value = json.loads(
            text,
            parse_int=_number(limits.max_number_chars, int),
            parse_float=_number(limits.max_number_chars, float),
            parse_constant=_not_json,
        )
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc.msg} at character {exc.pos})") from exc
    except _Refused as exc:
        raise error(f"{what} holds {exc}; send ordinary JSON numbers") from exc
    except RecursionError as exc:
        raise error(f"{what} nests arrays or objects deeper than the limit of {limits.max_depth}") from exc
    except ValueError as exc:  # e.g. a number the interpreter refuses to convert
        raise error(f"{what} is not valid JSON ({exc})") from exc
    if _depth(value) > limits.max_depth:
        raise error(f"{what} nests arrays or objects deeper than the limit of {limits.max_depth}")
    return value

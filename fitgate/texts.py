"""What counts as a readable text, for every door a text comes through (/predict, uploads).

A JSON string may hold a lone UTF-16 surrogate (``"\\ud800"``): Python decodes it into a ``str``
that no UTF-8 encoder, and so no tokenizer, can read. Such a text is refused where it arrives,
naming where it is, instead of failing later inside the tokenizer.
"""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_at(text: str) -> int | None:
    """The character offset of the first lone surrogate in ``text``, or None when it is well-formed Unicode."""
    found = _LONE_SURROGATE.search(text)
    return found.start() if found else None


def unreadable_reason(text: str) -> str | None:
    """Why a tokenizer cannot read ``text`` (None when it can), in words for the sender."""
    at = lone_surrogate_at(text)
    if at is None:
        return None
    return (
        f"holds a lone UTF-16 surrogate (U+{ord(text[at]):04X}) at character {at}, which is not Unicode text; "
        "send the characters themselves (or valid surrogate pairs in JSON escapes)"
    )

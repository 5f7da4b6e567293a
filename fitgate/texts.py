"""What counts as a readable text, for every door a text comes through (/predict, uploads), and when two texts
are the same text.

A JSON string may hold a lone UTF-16 surrogate (``"\\ud800"``): Python decodes it into a ``str``
that no UTF-8 encoder, and so no tokenizer, can read. Such a text is refused where it arrives,
naming where it is, instead of failing later inside the tokenizer.
"""

from __future__ import annotations

import re
import unicodedata

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SPACES = re.compile(r"\s+")


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


def same_text_key(text: str) -> str:
    """The form under which two texts count as one for duplicates, conflicts and split leakage.

    NFKC folds compatibility forms: full-width Latin letters and digits (``ＡＢＣ１２３``, common in Chinese and
    Japanese input), half-width katakana, ligatures; runs of whitespace count as one space. Case is kept: a
    cased model reads "Apple" and "apple" differently."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()

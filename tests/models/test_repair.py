"""The repair budget: a request may ask for fewer repair attempts than the operator allows, never more."""

from __future__ import annotations

from fitgate.settings import Settings
from models.repair import attempts_for
from training.arguments import TrainingArguments


def test_a_request_can_lower_the_repair_budget_but_not_raise_it() -> None:
    settings = Settings(remedy_max_attempts=1)
    assert attempts_for(TrainingArguments(), settings) == 1
    assert attempts_for(TrainingArguments(remedy_attempts=0), settings) == 0
    assert attempts_for(TrainingArguments(remedy_attempts=3), settings) == 1
    assert attempts_for(TrainingArguments(remedy_attempts=2), Settings(remedy_max_attempts=0)) == 0

"""The parameters form field: any JSON a client sends becomes validated arguments or a named 4xx refusal."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitgate.errors import ArgumentsError, InvalidRequest
from fitgate.json_input import JsonLimits
from service.uploads import parse_parameters
from training.arguments import TrainingArguments, plan_schedule

PROPERTY = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["auto", "cpu", "cuda", "cosine", "linear", "focal", "balanced", "none", "1e400"])
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
)
keys = st.sampled_from(list(TrainingArguments.model_fields)) | st.text(max_size=12)
documents = st.one_of(
    st.dictionaries(keys, values, max_size=6).map(json.dumps),
    values.map(json.dumps),
    st.text(max_size=60),
)


@PROPERTY
@given(documents)
def test_any_parameters_field_becomes_arguments_training_can_use_or_a_named_refusal(document: str) -> None:
    try:
        args = parse_parameters(document, JsonLimits(max_chars=1 << 16))
    except (InvalidRequest, ArgumentsError) as exc:
        assert str(exc), "a refusal must say what was wrong"
        return
    # what the door accepts, the libraries accept later: the seed, the schedule, the tokenizer's window
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    schedule = plan_schedule(train_rows=100, args=args)
    assert schedule.total_steps >= 1 and schedule.eval_every >= 1
    assert args.max_length >= 8


def _refusal(document: str) -> str:
    try:
        parse_parameters(document)
    except (InvalidRequest, ArgumentsError) as exc:
        return str(exc)
    raise AssertionError(f"{document!r} was accepted")


def test_the_refusals_name_what_to_fix() -> None:
    cases: dict[str, Any] = {
        '{"seed": 18446744073709551616}': "seed",
        '["num_train_epochs", 3]': "must be a JSON object",
        '{"learning_rate": NaN}': "not a JSON number",
        '{"no_such_argument": 1}': "no_such_argument",
    }
    for document, words in cases.items():
        assert words in _refusal(document), document

"""The schedule planned from the training arguments: how often a run evaluates."""

from __future__ import annotations

from training.arguments import TrainingArguments, plan_schedule


def test_long_epochs_are_evaluated_several_times_and_short_ones_once() -> None:
    args = TrainingArguments(per_device_train_batch_size=1, long_epoch_steps=100, long_epoch_eval_steps=40)
    assert plan_schedule(100, args).eval_every == 100  # an epoch of exactly long_epoch_steps is short
    assert plan_schedule(101, args).eval_every == 40
    assert plan_schedule(101, TrainingArguments(per_device_train_batch_size=1, eval_steps=7)).eval_every == 7

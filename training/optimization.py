"""AdamW, its learning-rate schedule and the fp16 loss scaler: the optimizer step of a run.

How many steps a run takes and when it evaluates is :func:`training.arguments.plan_schedule`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from training import modeling
from training.arguments import TrainingArguments


@dataclass
class Optimization:
    """AdamW, its learning-rate schedule and the fp16 loss scaler, stepped together."""

    optimizer: torch.optim.AdamW
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    max_grad_norm: float

    @property
    def learning_rate(self) -> float:
        """The top (head) group's current learning rate."""
        return float(self.scheduler.get_last_lr()[0])

    def step(self, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Backward, clip the global gradient norm, step, and advance the schedule."""
        torch.autograd.backward(self.scaler.scale(loss))  # = Tensor.backward(), which torch leaves untyped
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()


def build_optimization(
    model: torch.nn.Module,
    args: TrainingArguments,
    total_steps: int,
    device: torch.device,
    autocast: torch.dtype | None,
) -> Optimization:
    optimizer = torch.optim.AdamW(
        modeling.parameter_groups(
            model,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            layerwise_lr_decay=args.layerwise_lr_decay,
        ),
        lr=args.learning_rate,
        fused=device.type == "cuda",
    )
    scheduler: LambdaLR = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=int(args.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    # bf16 has fp32's range; only fp16 needs its gradients scaled
    scaler = torch.amp.GradScaler("cuda", enabled=autocast == torch.float16)
    return Optimization(optimizer, scheduler, scaler, args.max_grad_norm)

"""The optimization of a fine-tuning run: AdamW (decoupled weight decay) at a constant learning rate by default, as
the official recipe, optionally with a linear warmup, a cosine decay and gradient-norm clipping; step counts."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

LR_SCHEDULES = ("constant", "cosine")


@dataclass
class OptimConfig:
    """Fine-tuning section `optim`. Global batch = batch_size x grad_accumulation_steps x number of processes."""

    batch_size: int = 16  # frames per micro-batch per process
    grad_accumulation_steps: int = 1  # micro-batches whose gradients are summed into one optimizer step
    learning_rate: float = 5e-4  # AdamW peak learning rate
    lr_schedule: str = "constant"  # "constant" (the official recipe) or "cosine" (to 0 at max_steps, after warmup)
    warmup_steps: int = 0  # optimizer steps of linear warmup from 0 (official: none)
    max_grad_norm: float | None = None  # clip the global gradient L2 norm to this; null = no clipping (official)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (the PyTorch default the official script uses)
    max_steps: int = 200_000  # optimizer steps in total (a resumed run continues up to this)
    save_steps: int = 5_000  # checkpoint every this many optimizer steps, and at max_steps
    seed: int = 7  # seeds Python / NumPy / torch (random init, LoRA init, dropout); the data has data.seed

    def check(self) -> None:
        """Raise one clear error for a value the loop cannot use."""
        for name in ("batch_size", "grad_accumulation_steps", "max_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"optim.{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"optim.learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES or self.warmup_steps < 0:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} / warmup_steps {self.warmup_steps}: the schedule must "
                             f"be one of {LR_SCHEDULES} and warmup_steps >= 0")  # fmt: skip
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or null (no clipping), got {self.max_grad_norm}")


def learning_rate_at(cfg: OptimConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup over `warmup_steps`, then constant or a
    cosine decay that reaches 0 at `max_steps`. A pure function of the step, so a resumed run continues it exactly."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(
    cfg: OptimConfig, params: Iterable[torch.nn.Parameter], fused: bool = False
) -> torch.optim.Optimizer:
    """AdamW over the trainable weights (betas and eps at PyTorch's defaults, as the official script). `fused`:
    PyTorch's fused implementation (`speed.fused_optimizer`): the same update in one kernel per device and dtype
    instead of `foreach`'s kernel per operation, up to last-bit rounding."""
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused or None)

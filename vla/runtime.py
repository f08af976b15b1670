"""Process-level set-up shared by training, evaluation and demo collection: seeding, logging, W&B, and the
quantization choices every entry point accepts. Nothing here runs at import."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

QUANTIZATIONS = (None, "8bit", "4bit", "fp8")  # frozen LLM weights: bf16/fp32, LLM.int8 and nf4 (bitsandbytes), e4m3
# (vla.fp8_linear: FP8 tensor cores)
WANDB_MODES = ("online", "offline", "disabled")


def check_quantization(quantization: str | None, device=None) -> None:
    """Raise one clear error for a quantization name that is not one of QUANTIZATIONS, or (with the torch `device`
    the model will run on) for "fp8" on a card without FP8 tensor cores."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} must be null, '8bit', '4bit' or 'fp8'")
    if quantization == "fp8" and device is not None:
        from vla.fp8_linear import check_fp8_device

        check_fp8_device(device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices), and the hash seed that spawned workers inherit. With
    `deterministic`, cuDNN picks deterministic kernels (OpenVLA's `set_seed_everywhere`, used by evaluation)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


def configure_logging(rank: int = 0) -> None:
    """Scripts call this once: INFO on rank 0, WARNING elsewhere, one line format."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def start_wandb(
    *, mode: str, project: str, entity: str | None, name: str, run_dir: Path, config: dict[str, Any],
    run_id: str | None = None,
):  # fmt: skip
    """A W&B run writing under `run_dir` (None when `mode` is "disabled"). `run_id` resumes an earlier run."""
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb mode {mode!r} must be one of {WANDB_MODES}")
    if mode == "disabled":
        return None
    import wandb

    return wandb.init(
        project=project, entity=entity, mode=mode, id=run_id, name=name, resume="allow" if run_id else None,
        dir=str(run_dir), config=config,
    )  # fmt: skip

"""What a fine-tuning run reports while it trains: per-step metrics averaged over micro-batches and processes,
their moving averages, the progress bar, `metrics.jsonl` lines and (optionally) Weights & Biases points."""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vla.run_dir import RunDir
from vla.runtime import WANDB_MODES, start_wandb

logger = logging.getLogger(__name__)

METRICS = ("loss", "action_accuracy", "l1")  # per optimizer step, averaged over micro-batches and ranks


@dataclass
class LoggingConfig:
    """Fine-tuning section `logging`."""

    log_steps: int = 10  # one metrics.jsonl line (and W&B point) every this many optimizer steps, and the last one
    smoothing_window: int = 10  # optimizer steps averaged into the *_smoothed metrics and the progress bar
    wandb_project: str = "openvla"  # W&B project
    wandb_entity: str | None = None  # W&B user or team; null = the logged-in default (offline runs need none)
    wandb_mode: str = "offline"  # "online" (needs network + login), "offline" (files in the run dir) or "disabled"
    val_batches: int = 0  # > 0: at every checkpoint, loss / accuracy / L1 on up to this many batches of the data's val
    # split (episodes training never reads; vla.validation), logged as val_* in metrics.jsonl and W&B. 0 = off

    def check(self) -> None:
        for name in ("log_steps", "smoothing_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"logging.{name} must be >= 1, got {getattr(self, name)}")
        if self.val_batches < 0:
            raise ValueError(f"logging.val_batches must be >= 0 (0 = no held-out metrics), got {self.val_batches}")
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb_mode {self.wandb_mode!r} must be 'online', 'offline' or 'disabled'")


class MetricsLog:
    """Smoothing, the progress bar and the logged records of one process (only the main process writes)."""

    def __init__(self, cfg: LoggingConfig, run: RunDir, *, step: int, samples_per_step: int, max_steps: int,
                 is_main: bool, history: dict[str, list[float]] | None = None, wandb_id: str | None = None) -> None:  # fmt: skip
        self.cfg, self.run, self.is_main = cfg, run, is_main
        self.samples_per_step, self.max_steps = samples_per_step, max_steps
        self.history = {k: deque((history or {}).get(k, []), maxlen=cfg.smoothing_window) for k in METRICS}
        self.wandb_id = wandb_id  # kept in the trainer state: a resumed run continues the same W&B run
        self.tick = (time.perf_counter(), step)
        self.tracker = None
        self.bar = None
        self.start_step = step

    def start(self, config: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.max_steps, initial=self.start_step, desc="fine-tune", unit="step",
                        disable=not self.is_main)  # fmt: skip
        if self.is_main and self.cfg.wandb_mode != "disabled":
            self.wandb_id = self.wandb_id or secrets.token_hex(8)
            self.tracker = start_wandb(
                mode=self.cfg.wandb_mode, project=self.cfg.wandb_project, entity=self.cfg.wandb_entity,
                name=self.run.path.name, run_dir=self.run.path, config=config, run_id=self.wandb_id,
            )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tracker is not None:
            self.tracker.finish()

    def record(self, step: int, values: dict[str, float], learning_rate: float, device: torch.device,
               held_out: dict[str, float] | None = None) -> None:  # fmt: skip
        """One optimizer step's metrics: smoothing and the bar always; every log_steps (at the last step, and with
        `held_out` metrics: the val split's, vla.validation) a metrics.jsonl line and a W&B point, from the main
        process."""
        for key, value in values.items():
            self.history[key].append(value)
        smoothed = {f"{k}_smoothed": float(np.mean(v)) for k, v in self.history.items()}
        self.bar.update()
        self.bar.set_postfix(loss=f"{smoothed['loss_smoothed']:.4f}", acc=f"{smoothed['action_accuracy_smoothed']:.3f}")
        if not self.is_main or (step % self.cfg.log_steps and step != self.max_steps and not held_out):
            return
        if held_out:
            logger.info(
                "step %d held-out (val split): %s", step, ", ".join(f"{k} {v:.4f}" for k, v in held_out.items())
            )
        (then, then_step), now = self.tick, time.perf_counter()
        self.tick = (now, step)
        record = {"step": step, **values, **smoothed, "learning_rate": learning_rate,
                  "samples": step * self.samples_per_step,
                  "samples_per_s": (step - then_step) * self.samples_per_step / (now - then), **(held_out or {})}  # fmt: skip
        if device.type == "cuda":
            record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            record["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        self.run.append_metrics(record)
        if self.tracker is not None:
            self.tracker.log(record, step=step)

    def state(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}, "wandb_id": self.wandb_id}

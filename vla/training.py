"""The fine-tuning loop: gradient accumulation, bf16 autocast on CUDA, DDP under torchrun, NaN/inf stop, periodic
checkpoints and exact resume. The model owns its loss (`model(batch) -> (loss, metrics)`), `vla.data` owns the frame
stream, `vla.train_config.TrainConfig` says what to do; files live in `vla.run_dir`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vla import model_source
from vla.distributed import Distributed, average_over_ranks, gather, init_distributed, wrap_ddp
from vla.files import atomic_write_text
from vla.optim import learning_rate_at, make_optimizer
from vla.prefetch import Prefetched
from vla.run_dir import (
    ADAPTER_DIR,
    CHECKPOINT_FILE,
    STATE_FILES,
    STATISTICS_FILE,
    RunDir,
    config_to_dict,
    config_to_yaml,
    rng_state,
    set_rng_state,
)
from vla.runtime import seed_everything
from vla.train_config import TrainConfig
from vla.train_metrics import METRICS, MetricsLog
from vla.trainer_state import save_trainer_state

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf: the run stopped before the optimizer step and saved nothing after it."""


def train(cfg: TrainConfig) -> Path:
    """Fine-tune as `cfg` says; returns the run directory. Under torchrun every rank calls this (rank-sharded data,
    DDP on the trainable weights, rank 0 logs and saves). Raises before any weight loads on bad input, and
    `NonFiniteLossError` (leaving the last checkpoint intact) if the loss becomes NaN/inf."""
    created = not dist.is_initialized()
    env = init_distributed(cfg.run.device)
    try:
        cfg.validate()
        if env.world_size > 1:
            dist.barrier()  # every rank has checked the run dir before rank 0 creates it
        resolved = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, id=cfg.run_dir.name))
        return _train(resolved, env)  # config.yaml gets the resolved id
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def save_checkpoint(run: RunDir, model: nn.Module, cfg: TrainConfig, state: dict[str, Any],
                    statistics: dict[str, Any]) -> None:  # fmt: skip
    """One checkpoint: the adapter (LoRA), the merged model (save_merged), the trainer state (the resume point), the
    dataset statistics and checkpoint.json, all written into a staging folder and published together
    (vla.checkpoint_publish): a kill at any point leaves the previous checkpoint or this one, never a mix. The adapter
    and merged folders each hold their own checkpoint.json, so whoever loads them knows their step. Main process
    only."""
    from vla.checkpoint_publish import commit, staging_folder

    step, record = state["step"], {"step": state["step"]}
    stage, targets = staging_folder(run.path, step), {}
    if cfg.lora.enabled:
        from vla.lora import save_adapter

        save_adapter(model, stage / ADAPTER_DIR)
        atomic_write_text(stage / ADAPTER_DIR / CHECKPOINT_FILE, json.dumps(record))
        targets[ADAPTER_DIR] = cfg.run.adapter_path(run.path)
    if cfg.run.save_merged:
        from vla.checkpoint import save_official_checkpoint

        # Adapters are merged into CPU copies of the weights one tensor at a time, quantized weights are re-read from
        # their unquantized source files: no second copy of the model on the GPU (the official script's merge OOM).
        merged = cfg.run.merged_path(run.path, step)
        save_official_checkpoint(model, stage / merged.name)
        atomic_write_text(stage / merged.name / CHECKPOINT_FILE, json.dumps(record))
        targets[merged.name] = merged
    save_trainer_state(stage, state)
    atomic_write_text(stage / STATISTICS_FILE, json.dumps(statistics, indent=2))
    atomic_write_text(stage / CHECKPOINT_FILE, json.dumps(record))
    for name in (*STATE_FILES, STATISTICS_FILE, CHECKPOINT_FILE):  # checkpoint.json last: readers look for it
        targets[name] = run.file(name)
    commit(stage, step, targets)
    run.plot_learning_curve()


def _check_resumable(state: dict[str, Any], cfg: TrainConfig, env: Distributed) -> None:
    saved = {k: state[k] for k in ("batch_size", "grad_accumulation_steps", "world_size")}
    asked = {"batch_size": cfg.optim.batch_size, "grad_accumulation_steps": cfg.optim.grad_accumulation_steps,
             "world_size": env.world_size}  # fmt: skip
    if saved != asked:
        raise ValueError(f"cannot resume a run saved with {saved} as {asked}: the data position would not match")
    if state["step"] > cfg.optim.max_steps:
        raise ValueError(f"the run is at step {state['step']} > max_steps {cfg.optim.max_steps}; raise --max_steps")


def _restore(state: dict[str, Any], trainable: dict[str, nn.Parameter], optimizer, dataset, env: Distributed) -> None:
    saved = state["trainable"]
    wrong = sorted(set(saved) ^ set(trainable)) + [n for n in saved if n in trainable and
                                                   saved[n].shape != trainable[n].shape]  # fmt: skip
    if wrong:
        raise ValueError(f"trainer_state.pt holds other trainable weights than this model ({wrong[:3]}...); "
                         "resume with the run's own config.yaml (--config_path <run_dir>/config.yaml)")  # fmt: skip
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    dataset.load_state_dict(state["data"][env.rank])
    set_rng_state(state["rng"][env.rank])


def _train(cfg: TrainConfig, env: Distributed) -> Path:
    from vla.data import make_dataset
    from vla.prompt import collate

    run, device = RunDir(cfg.run_dir), env.device(cfg.run.device)
    if cfg.run.resume and env.is_main:
        from vla.checkpoint_publish import finish_interrupted

        finish_interrupted(run.path)  # a save killed after its commit point is completed, an earlier one dropped
    if cfg.run.resume and env.world_size > 1:
        dist.barrier()
    state = run.load_state() if cfg.run.resume and run.has_state else None
    if state is not None:
        _check_resumable(state, cfg, env)
    elif cfg.run.resume and env.is_main:
        logger.warning("no %s in %s: nothing to resume, starting at step 0", "trainer_state.pt", run.path)
    if env.is_main:
        logger.info("resolved config:\n%s", config_to_yaml(cfg))
    seed_everything(cfg.optim.seed)
    model = model_source.build_model(cfg.model, cfg.lora, device)
    if model.config.vision.image_size != cfg.data.image_size:
        raise ValueError(f"data.image_size {cfg.data.image_size} != the model's {model.config.vision.image_size}")
    cfg.speed.apply(model, device)
    if device.type == "cuda":  # peaks below are training's, not the loader's (8/4-bit weights pass through bf16)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if env.is_main:
        logger.info(model_source.parameter_line(model))
        compute = "bf16 autocast" if device.type == "cuda" else "float32"
        logger.info("weights stored in %s, computed in %s (model.weights_dtype)",
                    model_source.weights_dtype(cfg.model, cfg.lora, device), compute)  # fmt: skip
    model.train()
    dataset = make_dataset(cfg.data, model.sequence_builder, model.image_processor, rank=env.rank,
                           world_size=env.world_size, device=device)  # fmt: skip
    if cfg.model.unnorm_key is not None:
        name = getattr(dataset, "dataset_name", cfg.data.dataset_name)  # a video export carries its own name
        stats = model_source.checkpoint_statistics(cfg.model.vla_path, cfg.model.unnorm_key)
        dataset.dataset_statistics = {name: stats}
    model.norm_stats.update(dataset.dataset_statistics)  # merged checkpoints carry the fine-tune's statistics
    held_out = None
    if cfg.logging.val_batches:  # built now: an empty val split fails before the run dir is written
        from vla.validation import HeldOut

        held_out = HeldOut(cfg.data, model, dataset.dataset_statistics, batch_size=cfg.optim.batch_size,
                           max_batches=cfg.logging.val_batches, env=env, device=device)  # fmt: skip
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(cfg.optim, trainable.values(), fused=cfg.speed.fused_optimizer)
    if state is not None:
        _restore(state, trainable, optimizer, dataset, env)
    # Every check has passed and everything is built: only now is the run directory written.
    if env.is_main:
        run.claim(cfg.run.resume)
        run.truncate_metrics(state["step"] if state else 0)
        run.write_config(cfg)
        run.write_json(STATISTICS_FILE, dataset.dataset_statistics)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.optim.batch_size, num_workers=0,
                                         collate_fn=partial(collate, pad_token_id=model.config.pad_token_id))  # fmt: skip
    loop = _Loop(cfg, env, run, model, wrap_ddp(model, env, device), optimizer, dataset, device, state, held_out)
    if not cfg.speed.prefetch_batches:
        loop.fit(iter(loader))
        return run.path
    with Prefetched(iter(loader), cfg.speed.prefetch_batches, snapshot=dataset.state_dict) as ahead:
        loop.data_state = lambda: ahead.snapshot  # the position after the last batch used, not the last one made
        loop.fit(ahead)
    return run.path


class _Loop:
    """The optimizer-step loop and the state it checkpoints."""

    def __init__(self, cfg: TrainConfig, env, run, model, wrapped, optimizer, dataset, device, state,
                 held_out=None) -> None:  # fmt: skip
        self.cfg, self.env, self.run, self.model, self.wrapped = cfg, env, run, model, wrapped
        self.optimizer, self.dataset, self.device = optimizer, dataset, device
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.step = state["step"] if state else 0
        self.last_saved = self.step if state else None
        self.held_out = held_out  # a vla.validation.HeldOut: val-split metrics at every checkpoint
        self.data_state = dataset.state_dict  # the stream's position after the last batch the steps used
        optim = cfg.optim
        self.log = MetricsLog(
            cfg.logging, run, step=self.step, max_steps=optim.max_steps, is_main=env.is_main,
            samples_per_step=optim.batch_size * optim.grad_accumulation_steps * env.world_size,
            history=state["history"] if state else None, wandb_id=state.get("wandb_id") if state else None,
        )  # fmt: skip

    def state(self) -> dict[str, Any]:
        """Everything a resume needs. A collective (RNG and data positions are gathered from every rank)."""
        return {
            "step": self.step,
            "trainable": {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad},
            "optimizer": self.optimizer.state_dict(),
            "rng": gather(rng_state(), self.env),
            "data": gather(self.data_state(), self.env),
            **self.log.state(),  # history, wandb_id
            "batch_size": self.cfg.optim.batch_size,
            "grad_accumulation_steps": self.cfg.optim.grad_accumulation_steps,
            "world_size": self.env.world_size,
        }

    def micro_step(self, batch: dict[str, torch.Tensor], sync: bool) -> list[float]:
        """Forward + backward of one micro-batch, loss scaled by 1/N (N = grad_accumulation_steps) so the summed
        gradient of a step is that of the mean over its micro-batches. Returns [loss, action_accuracy, l1]."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        no_sync = nullcontext() if sync or self.wrapped is self.model else self.wrapped.no_sync()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with no_sync:
            with autocast:
                loss, metrics = self.wrapped(batch)
            (loss / self.cfg.optim.grad_accumulation_steps).backward()
        return [loss.item(), float(metrics["action_accuracy"]), float(metrics["l1"])]

    def fit(self, batches) -> None:
        """Optimizer steps until `max_steps`: N micro-batches, NaN/inf check, AdamW step, log, maybe save."""
        optim, accum = self.cfg.optim, self.cfg.optim.grad_accumulation_steps
        self.log.start(config_to_dict(self.cfg))
        try:
            while self.step < optim.max_steps:
                values = np.zeros(len(METRICS))
                for micro in range(accum):
                    values += np.asarray(self.micro_step(next(batches), sync=micro == accum - 1)) / accum
                values = average_over_ranks(values.tolist(), self.env, self.device)
                if not math.isfinite(values[0]):
                    raise NonFiniteLossError(self.non_finite_message(values[0]))
                if optim.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.trainable, optim.max_grad_norm)
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate_at(optim, self.step)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                lr = self.optimizer.param_groups[0]["lr"]
                saving = self.step % optim.save_steps == 0 or self.step == optim.max_steps
                held_out = self.held_out(self.model) if saving and self.held_out is not None else None
                self.log.record(self.step, dict(zip(METRICS, values, strict=True)), lr, self.device, held_out)
                if saving:
                    self.save()
        finally:
            self.log.close()

    def non_finite_message(self, loss: float) -> str:
        """What happened, what is safe on disk, and what to try."""
        if self.last_saved is None:
            kept = f"No checkpoint was saved yet: start again (a new --run_id, or delete {self.run.path})"
        else:
            kept = (f"The last good checkpoint is step {self.last_saved} in {self.run.path}; nothing after it was "
                    "saved. Continue from it with --resume")  # fmt: skip
        return (
            f"Training stopped at step {self.step + 1}: the loss is {loss} (not finite), so the optimizer step was "
            f"skipped. {kept}. What to try: a lower --optim.learning_rate (or --optim.warmup_steps), gradient "
            "clipping (--optim.max_grad_norm 1.0), and checking the data for NaN/inf actions."
        )

    def save(self) -> None:
        state = self.state()  # every rank takes part in the gathers
        if self.env.is_main:
            save_checkpoint(self.run, self.model, self.cfg, state, self.dataset.dataset_statistics)
            logger.info("saved step %d to %s", self.step, self.run.path)
        if self.env.world_size > 1:
            dist.barrier()
        self.last_saved = self.step

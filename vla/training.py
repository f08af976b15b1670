"""The generic fine-tuning loop (reference §8): AdamW at a constant learning rate, gradient accumulation, bf16 autocast
on CUDA, DDP under torchrun, metrics, checkpoints and exact resume. The model owns its loss: `model(batch) -> (loss,
metrics)`; everything about files lives in `vla.run_dir`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import random
import secrets
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vla.distributed import Distributed, average_over_ranks, gather, init_distributed, wrap_ddp
from vla.rlds import RLDSConfig, check_rlds_dir
from vla.run_dir import (
    ADAPTER_DIR,
    CHECKPOINT_FILE,
    MERGED_DIR,
    STATISTICS_FILE,
    RunDir,
    config_to_dict,
    config_to_yaml,
    rng_state,
    set_rng_state,
)
from vla.synthetic_data import SYNTHETIC_NAME

logger = logging.getLogger(__name__)

METRICS = ("loss", "action_accuracy", "l1")  # per optimizer step, averaged over micro-batches and ranks
LR_SCHEDULES = ("constant", "cosine")


def learning_rate_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup over `warmup_steps`, then constant or a
    cosine decay that reaches 0 at `max_steps`. A pure function of the step, so a resumed run continues it exactly."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf: the run stopped before the optimizer step and saved nothing after it."""


@dataclass
class TrainConfig:
    """One fine-tuning run: the starting model, the data, the optimization and where the run is written."""

    # Model
    vla_path: str | None = "openvla/openvla-7b"  # official-format checkpoint dir or HF hub id; None = random init
    model_preset: str = "tiny"  # VLAConfig preset ("tiny" | "small" | "full") for random init (vla_path None only)
    tokenizer_path: Path | None = None  # Llama-2 tokenizer dir, needed only for random init (vla_path None)
    quantization: str | None = None  # frozen LLM weights: None (bf16 on GPU), "8bit" (LLM.int8) or "4bit" (nf4)
    use_lora: bool = True  # train LoRA adapters only (official recipe); False = full fine-tuning, no quantization
    lora_rank: int = 32  # LoRA r (alpha = min(r, 16), as the official script)
    lora_dropout: float = 0.0  # dropout on the adapter input
    unnorm_key: str | None = None  # normalize actions with the starting checkpoint's statistics under this key
    # (e.g. continuing a LIBERO fine-tune); None = statistics of the dataset itself (the official behaviour)
    activation_checkpointing: bool = False  # recompute LLM activations in backward: less memory, ~2x slower
    # Data
    synthetic_data: bool = False  # random LIBERO-shaped frames instead of data.* (benchmarks and multi-GPU checks on a
    # machine without TensorFlow or a dataset); only data.seed and data.image_size apply
    video_frames_dir: Path | None = None  # read an export of scripts/export_video_frames.py instead of the RLDS
    # dataset (no TensorFlow needed: the GPU machine); of data.* only seed and image_aug apply
    data: RLDSConfig = field(default_factory=lambda: RLDSConfig(data_root_dir=Path("datasets/modified_libero_rlds")))
    # Optimization
    batch_size: int = 16  # frames per micro-batch per process
    grad_accumulation_steps: int = 1  # micro-batches per optimizer step (global batch = batch x this x world size)
    learning_rate: float = 5e-4  # AdamW peak learning rate
    lr_schedule: str = "constant"  # "constant" (reference §8) | "cosine" (decay to 0 at max_steps, after warmup)
    warmup_steps: int = 0  # linear warmup from 0 over this many optimizer steps (reference §8: none)
    max_grad_norm: float | None = None  # clip the global gradient norm to this (reference §8: no clipping)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (PyTorch default, as the official script)
    max_steps: int = 200_000  # optimizer steps in total (a resumed run continues up to this)
    save_steps: int = 5_000  # checkpoint every this many optimizer steps (and at max_steps)
    seed: int = 7  # seeds Python/NumPy/torch (random init, LoRA init, dropout); the data seed is data.seed
    device: str = "auto"  # "auto" = cuda:LOCAL_RANK when CUDA is available, else "cpu"
    # Run directory and logging
    run_root_dir: Path = Path("runs")  # runs are written to run_root_dir/run_id
    run_id: str | None = None  # None = "<model>+<dataset>+b<global batch>+lr-<lr>[+lora-r<r>][+q-<quant>]"
    resume: bool = False  # continue run_root_dir/run_id from its trainer_state.pt (else the dir must not exist)
    save_merged: bool = False  # also write the merged model (official checkpoint format) to run_dir/merged per save
    log_steps: int = 10  # one metrics.jsonl line (and W&B point) every this many optimizer steps
    smoothing_window: int = 10  # optimizer steps averaged into the *_smoothed metrics and the progress bar
    wandb_project: str = "openvla"  # W&B project
    wandb_entity: str | None = None  # W&B entity (user or team); None = the logged-in default
    wandb_mode: str = "disabled"  # "online" (needs `wandb login`), "offline" (local files, sync later), "disabled"
    # Speed and memory (vla.speedups; none changes the stored weights, docs/PERFORMANCE.md "Issue 8" measures them)
    checkpoint_llm_layers: int | None = None  # with activation_checkpointing: only the first N Llama layers recompute
    # (None = all 32); the rest keep activations: faster, more memory
    checkpoint_vision: bool = False  # recompute the vision towers' blocks in backward (~0.5 GiB less per sample)
    lora_bf16_inputs: bool = False  # skip peft's float32 copy of each adapter input (bit-identical under bf16 autocast)
    lora_fused: bool = False  # LoRA scale on the rank-r side and the add in the matmul epilogue (last-bit rounding)
    int8_weight_only: bool = False  # quantization 8bit: dequantize the int8 weights to bf16 per matmul instead of
    # LLM.int8's int8 activations + outlier search (same stored int8 weights; no host syncs, faster)
    expandable_segments: bool = False  # CUDA allocator grows segments in place: lower peak reserved memory

    @property
    def run_dir(self) -> Path:
        return Path(self.run_root_dir) / (self.run_id or self.default_run_id())

    def default_run_id(self) -> str:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        model = Path(self.vla_path).name if self.vla_path else f"{self.model_preset}-random"
        dataset = SYNTHETIC_NAME if self.synthetic_data else self.data.dataset_name
        run_id = f"{model}+{dataset}+b{self.batch_size * self.grad_accumulation_steps * world}"
        run_id += f"+lr-{self.learning_rate}"
        run_id += f"+lora-r{self.lora_rank}" if self.use_lora else "+full"
        return run_id + (f"+q-{self.quantization}" if self.quantization else "")

    def validate(self) -> None:
        """Every check that needs no weights: call before loading a 7B model. Raises one clear error."""
        positive = ("batch_size", "grad_accumulation_steps", "max_steps", "save_steps", "log_steps", "smoothing_window")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES or self.warmup_steps < 0:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} / warmup_steps {self.warmup_steps}: the schedule must "
                             f"be one of {LR_SCHEDULES} and warmup_steps >= 0")  # fmt: skip
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or null (no clipping), got {self.max_grad_norm}")
        if self.wandb_mode not in ("online", "offline", "disabled"):
            raise ValueError(f"wandb_mode {self.wandb_mode!r} must be 'online', 'offline' or 'disabled'")
        if self.synthetic_data and self.video_frames_dir is not None:
            raise ValueError("synthetic_data and video_frames_dir both pick the data: set one of them")
        if self.video_frames_dir is not None:
            from vla.video_frames import read_index

            read_index(Path(self.video_frames_dir))  # names the missing piece and the export command
        elif not self.synthetic_data:
            if self.data.split != "train":
                raise ValueError(f"data.split is {self.data.split!r}; fine-tuning reads the 'train' split")
            _check_dataset(self.data)
        _check_model_source(self)
        _check_quantization(self)
        RunDir(self.run_dir).check_available(self.resume)


def _check_dataset(data: RLDSConfig) -> None:
    root = Path(data.data_root_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data.data_root_dir {root} does not exist; point it at the folder that holds "
                                f"<dataset_name>/{data.version}/ (e.g. the modified_libero_rlds download)")  # fmt: skip
    if not (root / data.dataset_name).is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / data.version).is_dir())
        raise FileNotFoundError(
            f"unknown dataset {data.dataset_name!r}: no {root / data.dataset_name}; datasets in {root}: {found or 'none'}"
        )
    check_rlds_dir(data.dataset_dir)


def _check_model_source(cfg: TrainConfig) -> None:
    if cfg.vla_path is None:
        if cfg.tokenizer_path is None or not (Path(cfg.tokenizer_path) / "tokenizer.model").is_file():
            raise FileNotFoundError(
                f"random init (vla_path None) needs tokenizer_path = a Llama-2 tokenizer dir with tokenizer.model; "
                f"got {cfg.tokenizer_path}"
            )
        if cfg.unnorm_key is not None:
            raise ValueError(f"unnorm_key {cfg.unnorm_key!r} needs a checkpoint (vla_path) to take statistics from")
        return
    looks_local = cfg.vla_path.startswith((".", "/", "~")) or cfg.vla_path.count("/") != 1  # hub ids: "org/name"
    if looks_local and not Path(cfg.vla_path).expanduser().exists():
        raise FileNotFoundError(f"vla_path {cfg.vla_path} does not exist (and is not a hub id like openvla/openvla-7b)")
    if Path(cfg.vla_path).exists() and not (Path(cfg.vla_path) / "config.json").is_file():
        raise FileNotFoundError(f"vla_path {cfg.vla_path} has no config.json; point it at an OpenVLA checkpoint dir")
    if cfg.unnorm_key is not None:
        checkpoint_statistics(cfg.vla_path, cfg.unnorm_key)


def checkpoint_statistics(vla_path: str, unnorm_key: str) -> dict[str, Any]:
    """The statistics entry `unnorm_key` of a checkpoint (its dataset_statistics.json or config.json `norm_stats`),
    read without loading weights. KeyError lists the keys it holds."""
    from vla.normalization import load_dataset_statistics

    stats: dict[str, Any] = {}
    for name in ("config.json", STATISTICS_FILE):
        path = Path(vla_path) / name
        if not Path(vla_path).exists():  # a hub id: fetch only the small json files
            from huggingface_hub import hf_hub_download

            try:
                path = Path(hf_hub_download(vla_path, name))
            except Exception:  # noqa: BLE001 - a checkpoint need not have dataset_statistics.json
                continue
        if path.is_file() and (name != "config.json" or "norm_stats" in json.loads(path.read_text())):
            stats.update(load_dataset_statistics(path))
    if unnorm_key not in stats:
        raise KeyError(
            f"checkpoint {vla_path} has no statistics for unnorm_key {unnorm_key!r}; it holds {sorted(stats)}. "
            "Set unnorm_key to one of them, or to null to use the dataset's own statistics"
        )
    return stats[unnorm_key]


def _check_quantization(cfg: TrainConfig) -> None:
    if cfg.quantization not in (None, "8bit", "4bit"):
        raise ValueError(f"quantization {cfg.quantization!r} must be null, '8bit' or '4bit'")
    if cfg.int8_weight_only and cfg.quantization != "8bit":
        raise ValueError(
            "int8_weight_only computes with 8-bit weights: set quantization 8bit or int8_weight_only false"
        )
    if cfg.quantization is None:
        return
    if not cfg.use_lora:
        raise ValueError(f"quantization {cfg.quantization!r} freezes the LLM weights: set use_lora true")
    if cfg.save_merged and cfg.vla_path is None:
        raise ValueError("save_merged re-reads unquantized weights from vla_path; a random init has none: set "
                         "quantization null or save_merged false")  # fmt: skip
    try:
        importlib.import_module("bitsandbytes")
    except Exception as err:  # noqa: BLE001 - a broken install raises more than ImportError
        raise ImportError(
            f"quantization {cfg.quantization!r} needs bitsandbytes, which does not import ({type(err).__name__}: "
            f"{err}); `pip install bitsandbytes==0.50.2`, or set quantization null"
        ) from None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The VLA to fine-tune (with LoRA adapters when `cfg.use_lora`), on `device`: weights bf16 on CUDA, fp32 on CPU."""
    from vla.lora import LoraSettings
    from vla.model import VLA, VLAConfig, build_vla

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lora = LoraSettings(rank=cfg.lora_rank, dropout=cfg.lora_dropout) if cfg.use_lora else None
    if cfg.vla_path is not None:
        return VLA.from_pretrained(cfg.vla_path, device=device, dtype=dtype, quantization=cfg.quantization, lora=lora)
    from vla.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(cfg.tokenizer_path)
    config = VLAConfig.preset(cfg.model_preset)
    return build_vla(config, tokenizer, quantization=cfg.quantization, lora=lora, device=device, dtype=dtype)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Non-reentrant checkpointing of every Llama decoder layer (works with frozen inputs and DDP)."""
    llm, kwargs = model.language_model, {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.24 renamed it
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def parameter_line(model: nn.Module) -> str:
    """peft's `print_trainable_parameters` line (4-bit weights count twice their packed size, as peft counts)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1) for p in model.parameters())
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def save_checkpoint(run: RunDir, model: nn.Module, cfg: TrainConfig, state: dict[str, Any]) -> None:
    """Adapter (or nothing, for full fine-tuning), then the trainer state (the resume point), then optionally the
    merged model. Main process only; every file lands atomically."""
    if cfg.use_lora:
        from vla.lora import save_adapter

        save_adapter(model, run.file(ADAPTER_DIR))
    run.save_state(state)
    run.write_json(CHECKPOINT_FILE, {"step": state["step"]})
    if cfg.save_merged:
        from vla.checkpoint import save_official_checkpoint

        # Adapters are merged into CPU copies of the weights one tensor at a time, quantized weights are re-read from
        # their unquantized source files: no second copy of the model on the GPU (the official script's merge OOM).
        save_official_checkpoint(model, run.file(MERGED_DIR), overwrite=True)
    run.plot_learning_curve()


def _check_resumable(state: dict[str, Any], cfg: TrainConfig, env: Distributed) -> None:
    saved = {k: state[k] for k in ("batch_size", "grad_accumulation_steps", "world_size")}
    asked = {"batch_size": cfg.batch_size, "grad_accumulation_steps": cfg.grad_accumulation_steps,
             "world_size": env.world_size}  # fmt: skip
    if saved != asked:
        raise ValueError(f"cannot resume a run saved with {saved} as {asked}: the data position would not match")
    if state["step"] > cfg.max_steps:
        raise ValueError(f"the run is at step {state['step']} > max_steps {cfg.max_steps}; raise --max_steps")


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


def train(cfg: TrainConfig) -> Path:
    """Fine-tune as `cfg` says; returns the run directory. Under torchrun every rank calls this (rank-sharded data,
    DDP on the trainable weights, rank 0 logs and saves). Raises before any weight loads on bad input, and
    `NonFiniteLossError` (leaving the last checkpoint intact) if the loss becomes NaN/inf."""
    created = not dist.is_initialized()
    env = init_distributed(cfg.device)
    try:
        cfg.validate()
        if env.world_size > 1:
            dist.barrier()  # every rank has checked the run dir before rank 0 creates it
        return _train(dataclasses.replace(cfg, run_id=cfg.run_dir.name), env)  # config.yaml gets the resolved id
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, env: Distributed) -> Path:
    from vla.prompt import collate
    from vla.rlds import RLDSDataset
    from vla.synthetic_data import SyntheticDataset

    run, device = RunDir(cfg.run_dir), env.device(cfg.device)
    state = run.load_state() if cfg.resume and run.has_state else None
    if state is not None:
        _check_resumable(state, cfg, env)
    elif cfg.resume and env.is_main:
        logger.warning("no %s in %s: nothing to resume, starting at step 0", "trainer_state.pt", run.path)
    if env.is_main:
        logger.info("resolved config:\n%s", config_to_yaml(cfg))
    _seed_everything(cfg.seed)
    model = build_model(cfg, device)
    if model.config.vision.image_size != cfg.data.image_size:
        raise ValueError(f"data.image_size {cfg.data.image_size} != the model's {model.config.vision.image_size}")
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    from vla.speedups import apply_training_speedups

    apply_training_speedups(
        model, checkpoint_llm_layers=cfg.checkpoint_llm_layers if cfg.activation_checkpointing else None,
        checkpoint_vision=cfg.checkpoint_vision, lora_bf16_inputs=cfg.lora_bf16_inputs and device.type == "cuda",
        lora_fused=cfg.lora_fused, int8_weight_only=cfg.int8_weight_only, expandable_segments=cfg.expandable_segments,
    )  # fmt: skip
    if device.type == "cuda":  # peaks below are training's, not the loader's (8/4-bit weights pass through bf16)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if env.is_main:
        logger.info(parameter_line(model))
    model.train()
    if cfg.synthetic_data:
        dataset = SyntheticDataset(model.sequence_builder, model.image_processor, cfg.data.seed, env.rank,
                                   env.world_size, image_size=cfg.data.image_size)  # fmt: skip
    elif cfg.video_frames_dir is not None:
        from vla.video_frames import VideoFrameDataset

        dataset = VideoFrameDataset(cfg.video_frames_dir, model.sequence_builder, model.image_processor,
                                    seed=cfg.data.seed, image_aug=cfg.data.image_aug, rank=env.rank,
                                    world_size=env.world_size, device=device)  # fmt: skip
    else:
        dataset = RLDSDataset(cfg.data, model.sequence_builder, model.image_processor, env.rank, env.world_size)
    if cfg.unnorm_key is not None:
        name = getattr(dataset, "dataset_name", cfg.data.dataset_name)  # a video export carries its own name
        dataset.dataset_statistics = {name: checkpoint_statistics(cfg.vla_path, cfg.unnorm_key)}
    model.norm_stats.update(dataset.dataset_statistics)  # merged checkpoints carry the fine-tune's statistics
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if state is not None:
        _restore(state, trainable, optimizer, dataset, env)
    if env.is_main:
        run.truncate_metrics(state["step"] if state else 0)
        run.write_config(cfg)
        run.write_json(STATISTICS_FILE, dataset.dataset_statistics)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=0,
        collate_fn=partial(collate, pad_token_id=model.config.pad_token_id),
    )
    loop = _Loop(cfg, env, run, model, wrap_ddp(model, env, device), optimizer, dataset, device, state)
    loop.fit(iter(loader))
    return run.path


class _Loop:
    """The optimizer-step loop and the state it checkpoints."""

    def __init__(self, cfg, env, run, model, wrapped, optimizer, dataset, device, state) -> None:
        self.cfg, self.env, self.run, self.model, self.wrapped = cfg, env, run, model, wrapped
        self.optimizer, self.dataset, self.device = optimizer, dataset, device
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.step = state["step"] if state else 0
        self.history = {k: deque(state["history"][k] if state else [], maxlen=cfg.smoothing_window) for k in METRICS}
        self.wandb_id = state.get("wandb_id") if state else None
        self.last_saved = self.step if state else None

    def state(self) -> dict[str, Any]:
        """Everything a resume needs. A collective (RNG and data positions are gathered from every rank)."""
        return {
            "step": self.step,
            "trainable": {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad},
            "optimizer": self.optimizer.state_dict(),
            "rng": gather(rng_state(), self.env),
            "data": gather(self.dataset.state_dict(), self.env),
            "history": {k: list(v) for k, v in self.history.items()},
            "batch_size": self.cfg.batch_size,
            "grad_accumulation_steps": self.cfg.grad_accumulation_steps,
            "world_size": self.env.world_size,
            "wandb_id": self.wandb_id,
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
            (loss / self.cfg.grad_accumulation_steps).backward()
        return [loss.item(), float(metrics["action_accuracy"]), float(metrics["l1"])]

    def fit(self, batches) -> None:
        """Optimizer steps until `max_steps`: N micro-batches, NaN/inf check, AdamW step, log, maybe save."""
        from tqdm.auto import tqdm

        cfg, accum = self.cfg, self.cfg.grad_accumulation_steps
        tracker = self._start_wandb() if self.env.is_main else None
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="fine-tune", unit="step", disable=not self.env.is_main)
        self.tick = (time.perf_counter(), self.step)
        try:
            while self.step < cfg.max_steps:
                values = np.zeros(len(METRICS))
                for micro in range(accum):
                    values += np.asarray(self.micro_step(next(batches), sync=micro == accum - 1)) / accum
                values = average_over_ranks(values.tolist(), self.env, self.device)
                if not math.isfinite(values[0]):
                    where = f"step {self.last_saved} in {self.run.path}" if self.last_saved else "none was saved yet"
                    raise NonFiniteLossError(
                        f"loss is {values[0]} at step {self.step + 1}: stopped before the optimizer step, saving "
                        f"nothing; the last good checkpoint is {where} (--resume from it, perhaps with a lower "
                        "learning_rate)"
                    )
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate_at(cfg, self.step)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.record(dict(zip(METRICS, values, strict=True)), bar, tracker)
                if self.step % cfg.save_steps == 0 or self.step == cfg.max_steps:
                    self.save()
        finally:
            bar.close()
            if tracker is not None:
                tracker.finish()

    def record(self, values: dict[str, float], bar, tracker) -> None:
        """Smoothing, the progress bar, and (every log_steps, main process) metrics.jsonl and W&B."""
        cfg = self.cfg
        for key, value in values.items():
            self.history[key].append(value)
        smoothed = {f"{k}_smoothed": float(np.mean(v)) for k, v in self.history.items()}
        bar.update()
        bar.set_postfix(loss=f"{smoothed['loss_smoothed']:.4f}", acc=f"{smoothed['action_accuracy_smoothed']:.3f}")
        if not self.env.is_main or (self.step % cfg.log_steps and self.step != cfg.max_steps):
            return
        samples_per_step = cfg.batch_size * cfg.grad_accumulation_steps * self.env.world_size
        (then, then_step), now = self.tick, time.perf_counter()
        self.tick = (now, self.step)
        record = {"step": self.step, **values, **smoothed, "learning_rate": self.optimizer.param_groups[0]["lr"],
                  "samples": self.step * samples_per_step,
                  "samples_per_s": (self.step - then_step) * samples_per_step / (now - then)}  # fmt: skip
        if self.device.type == "cuda":
            record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            record["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        self.run.append_metrics(record)
        if tracker is not None:
            tracker.log(record, step=self.step)

    def save(self) -> None:
        state = self.state()  # every rank takes part in the gathers
        if self.env.is_main:
            save_checkpoint(self.run, self.model, self.cfg, state)
            logger.info("saved step %d to %s", self.step, self.run.path)
        if self.env.world_size > 1:
            dist.barrier()
        self.last_saved = self.step

    def _start_wandb(self):
        cfg = self.cfg
        if cfg.wandb_mode == "disabled":
            return None
        import wandb

        self.wandb_id = self.wandb_id or secrets.token_hex(8)  # kept in trainer_state: a resume continues it
        return wandb.init(
            project=cfg.wandb_project, entity=cfg.wandb_entity, mode=cfg.wandb_mode, id=self.wandb_id,
            name=self.run.path.name, resume="allow", dir=str(self.run.path), config=config_to_dict(cfg),
        )  # fmt: skip

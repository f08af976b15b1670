"""Where a from-scratch training step of the learning proof spends its time: the data path and the model step, apart.

    python scripts/bench_small_training.py --tokenizer_path DIR                    # preset small, batch 128, CUDA
    python scripts/bench_small_training.py --tokenizer_path DIR --batch_sizes "[128,256]" --profile true

The frames are random yuv444p planes held in memory (where `VideoFrameDataset` holds a decoded export), so no export or
simulator is needed; what is timed is the code the learning proof runs (`IndexedFrameStream`, `collate`, the model,
AdamW). Rows, each at every batch size:
- `chunks`: gather + YUV -> RGB + augmentation (`IndexedFrameStream._chunks`), frames/s;
- `stream`: the same through `normalize_batch`, the per-sample sequences and `collate` (what the loop receives);
- `step`: forward + backward + clip + AdamW on one fixed batch under bf16 autocast, float32 weights (no data);
- `train`: stream + step, as `finetune.py` runs them by default;
- `train, prefetched`: the same with the stream run ahead in a background thread (`vla.prefetch`, `finetune.py
  --speed.prefetch_batches 2`): what overlapping the two gains;
- `step, fused AdamW` and `train, fused AdamW`: `step` and `train` with AdamW's fused implementation
  (`--speed.fused_optimizer true`) instead of its default `foreach` one.
`--profile true` adds torch.profiler's table (self device time) of a few `train` steps at the first batch size.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import draccus
import numpy as np
import torch

from vla.lora import LoraConfig
from vla.model_source import ModelConfig, build_model
from vla.normalization import dataset_statistics
from vla.optim import OptimConfig, make_optimizer
from vla.prefetch import Prefetched
from vla.prompt import collate
from vla.video_frames import VideoFrameDataset

REPO = Path(__file__).resolve().parents[1]
INSTRUCTIONS = [f"pick up the black bowl number {i} and place it on the plate" for i in range(10)]


@dataclass
class BenchConfig:
    preset: str = "small"  # vla.model_config preset trained from random weights
    tokenizer_path: Path = REPO.parent / "shared" / "tokenizers" / "llama2"
    batch_sizes: list[int] = field(default_factory=lambda: [128])
    frames: int = 8192  # random frames held in memory
    steps: int = 30  # timed steps per row (after `warmup`)
    warmup: int = 5
    device: str = "cuda"
    profile: bool = False


class MemoryFrames(VideoFrameDataset):
    """`VideoFrameDataset` over random yuv444p frames in memory instead of a decoded export: 10 episodes of
    `frames / 10` (its `_gather`, YUV -> RGB on the device, unchanged)."""

    def __init__(self, frames: int, *args, **kwargs) -> None:
        self._count = frames
        super().__init__(Path("memory"), *args, **kwargs)

    def _open(self) -> None:
        size, rng = self.image_processor.image_size, np.random.default_rng(0)
        actions = rng.uniform(-1, 1, (self._count, 7)).astype(np.float32)
        self.dataset_name, self.standardize = "bench", "identity"
        self.dataset_statistics = {"bench": dataset_statistics(actions, len(INSTRUCTIONS))}
        lengths = np.full(len(INSTRUCTIONS), self._count // len(INSTRUCTIONS))
        self._assign_frames(lengths, actions[: lengths.sum()], INSTRUCTIONS, "memory")
        self._frames = torch.from_numpy(rng.integers(0, 256, (len(self._mine), 3, size, size), dtype=np.uint8))


def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of `fn` over `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def main(cfg: BenchConfig) -> None:
    device = torch.device(cfg.device)
    model = build_model(ModelConfig(vla_path=None, preset=cfg.preset, tokenizer_path=cfg.tokenizer_path),
                        LoraConfig(enabled=False), device)  # fmt: skip
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizers = {fused: make_optimizer(OptimConfig(), trainable, fused=fused) for fused in (False, True)}
    cuda = device.type == "cuda"  # as the trainer: bf16 autocast on CUDA, float32 on the CPU

    def step(batch, fused: bool = False) -> None:
        optimizer = optimizers[fused]
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext():
            loss, metrics = model(batch)
        loss.backward()
        _ = loss.item(), float(metrics["action_accuracy"]), float(metrics["l1"])  # the loop's per-step reads
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    print(f"| preset {cfg.preset}, {device} | batch | ms per batch | samples/s |")
    print("|---|---|---|---|")
    for batch_size in cfg.batch_sizes:
        stream = MemoryFrames(cfg.frames, model.sequence_builder, model.image_processor, image_aug=True,
                              device=device, chunk_size=2 * batch_size)  # fmt: skip
        loader = iter(torch.utils.data.DataLoader(stream, batch_size=batch_size, num_workers=0,
                                                  collate_fn=partial(collate, pad_token_id=model.config.pad_token_id)))  # fmt: skip
        for name, seconds, frames in bench_rows(stream, loader, step, cfg, device, batch_size):
            print(f"| {name} | {frames} | {seconds * 1e3:.1f} | {frames / seconds:,.0f} |")
        if cfg.profile and batch_size == cfg.batch_sizes[0]:
            print_profile(loader, step, device)


def bench_rows(stream, loader, step, cfg: BenchConfig, device: torch.device, batch_size: int):
    """(row, seconds per call, frames per call) of the rows in the module docstring."""
    chunks, fixed = stream._chunks(), next(loader)
    yield "chunks", timed(lambda: next(chunks), cfg.steps, cfg.warmup, device), stream.chunk_size
    yield "stream", timed(lambda: next(loader), cfg.steps, cfg.warmup, device), batch_size
    yield "step", timed(lambda: step(fixed), cfg.steps, cfg.warmup, device), batch_size
    yield "train", timed(lambda: step(next(loader)), cfg.steps, cfg.warmup, device), batch_size
    with Prefetched(loader) as ahead:
        yield "train, prefetched", timed(lambda: step(next(ahead)), cfg.steps, cfg.warmup, device), batch_size
    yield "step, fused AdamW", timed(lambda: step(fixed, fused=True), cfg.steps, cfg.warmup, device), batch_size
    yield "train, fused AdamW", timed(lambda: step(next(loader), fused=True), cfg.steps, cfg.warmup, device), batch_size


def print_profile(loader, step, device: torch.device) -> None:
    """torch.profiler's table of 5 `train` steps, by self device time (CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            step(next(loader))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))


if __name__ == "__main__":
    main(draccus.parse(BenchConfig))

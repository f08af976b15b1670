"""Held-out metrics: the model's loss, action-token accuracy and L1 on the val split of its data (the 5 percent of
episodes that training never reads, `vla.data_config.SPLITS`). Fine-tuning reports them at every checkpoint when
`logging.val_batches` > 0, `scripts/val_metrics.py` for any saved checkpoint. Training metrics alone cannot tell a
model that learns its task from one that memorizes its demonstrations; these can."""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from functools import partial
from itertools import islice

import torch
from torch import nn

from vla.data import DataConfig, make_dataset
from vla.distributed import Distributed, average_over_ranks
from vla.prompt import collate

VAL_METRICS = ("val_loss", "val_action_accuracy", "val_l1")  # as logged in metrics.jsonl and W&B
SWAPPABLE_SOURCES = ("frames", "video_frames")  # data sources whose episodes' instructions HeldOut can swap


class HeldOut:
    """The val split of `cfg`'s data as fixed batches: every call measures the same frames (the val split is read in
    storage order, without augmentation), so the numbers of successive checkpoints compare. Its actions are
    normalized with `statistics` (`{dataset_name: stats}`: the training run's) when given, else the data's own.
    `swap_instructions`: every episode gets another task's instruction (a frame store or video export only;
    `IndexedFrameStream.swap_instructions`), so the metrics say how much the model reads its instruction."""

    def __init__(self, cfg: DataConfig, model: nn.Module, statistics: dict | None, *, batch_size: int, max_batches: int,
                 env: Distributed, device: torch.device, swap_instructions: bool = False) -> None:  # fmt: skip
        if swap_instructions and cfg.source not in SWAPPABLE_SOURCES:
            raise ValueError(f"swapping instructions needs data.source {' or '.join(SWAPPABLE_SOURCES)}, not "
                             f"{cfg.source!r}: export the dataset with scripts/export_video_frames.py")  # fmt: skip
        val = dataclasses.replace(cfg, split="val", image_aug=False)
        self.dataset = make_dataset(val, model.sequence_builder, model.image_processor, rank=env.rank,
                                    world_size=env.world_size, device=device)  # fmt: skip
        if swap_instructions:
            self.dataset.swap_instructions()
        if statistics is not None:
            self.dataset.dataset_statistics = statistics
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, num_workers=0,
                                                  collate_fn=partial(collate, pad_token_id=model.config.pad_token_id))  # fmt: skip
        self.max_batches, self.env, self.device = max_batches, env, device

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """`VAL_METRICS` -> value: means over the batches of every rank (up to `max_batches` each; a rank whose shard
        of the val split is empty adds none). Runs in eval mode without gradients and leaves the RNG states as it
        found them (training with and without validation takes the same steps)."""
        was_training = model.training
        model.eval()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        devices = [self.device] if self.device.type == "cuda" else []
        sums, count = torch.zeros(len(VAL_METRICS), dtype=torch.float64), 0
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast:
                for batch in islice(self.loader, self.max_batches):
                    loss, metrics = model({k: v.to(self.device, non_blocking=True) for k, v in batch.items()})
                    sums += torch.tensor([loss.item(), float(metrics["action_accuracy"]), float(metrics["l1"])],
                                         dtype=torch.float64)  # fmt: skip
                    count += 1
        finally:
            model.train(was_training)
        *totals, batches = average_over_ranks([*sums.tolist(), float(count)], self.env, self.device)
        return {key: total / batches for key, total in zip(VAL_METRICS, totals, strict=True)}

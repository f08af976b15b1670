"""Held-out loss, action-token accuracy and L1 of saved checkpoints on the val split of their data (the 5 percent of
episodes fine-tuning never reads): the numbers that tell memorizing the demonstrations from learning the task.

    python scripts/val_metrics.py --checkpoint runs/a/merged--15000_chkpt checkpoints/small-libero-spatial \
        --source video_frames --frames_dir data/spatial_frames

One row per checkpoint, every checkpoint on the same frames. Actions are normalized with each checkpoint's own
statistics for the dataset (what it was trained with; `--unnorm_key`, default the dataset's name), as
`logging.val_batches` does during fine-tuning (vla.validation). `--swap_instructions` adds a second row per
checkpoint with every episode given another task's instruction: a model that reads its instruction loses accuracy
there, one that ignores it scores the same (frame stores and video exports).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from vla.checkpoint import read_norm_stats
from vla.data import check_data
from vla.data_config import DATA_SOURCES, DataConfig
from vla.distributed import Distributed
from vla.model import VLA
from vla.normalization import resolve_unnorm_key
from vla.validation import SWAPPABLE_SOURCES, VAL_METRICS, HeldOut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="merged (official-format) checkpoint folders")
    parser.add_argument("--source", choices=DATA_SOURCES, default="rlds")
    parser.add_argument("--frames_dir", type=Path, help="video_frames / frames: the export or frame store")
    parser.add_argument("--data_root_dir", type=Path, default=DataConfig.data_root_dir, help="rlds: the datasets")
    parser.add_argument("--dataset_name", default=DataConfig.dataset_name, help="rlds: the dataset")
    parser.add_argument("--max_hold", type=int, help="video_frames / frames: frames kept of each still hold")
    parser.add_argument("--unnorm_key", help="each checkpoint's statistics entry; default: the dataset's name")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_batches", type=int, default=1_000_000, help="default: the whole val split")
    parser.add_argument("--swap_instructions", action="store_true", help="also measure with swapped instructions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.swap_instructions and args.source not in SWAPPABLE_SOURCES:
        parser.error(f"--swap_instructions needs --source {' or '.join(SWAPPABLE_SOURCES)} (export RLDS data with "
                     "scripts/export_video_frames.py)")  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg = DataConfig(source=args.source, frames_dir=args.frames_dir, data_root_dir=args.data_root_dir,
                     dataset_name=args.dataset_name, split="val", max_hold=args.max_hold)  # fmt: skip
    check_data(cfg)
    statistics = [read_norm_stats(path) for path in args.checkpoint]  # every checkpoint is checked before any loads
    device, env = torch.device(args.device), Distributed()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for path, stats in zip(args.checkpoint, statistics, strict=True):
        vla = VLA.from_pretrained(path, device=device, dtype=dtype)
        held_out = HeldOut(cfg, vla, None, batch_size=args.batch_size, max_batches=args.max_batches, env=env,
                           device=device)  # fmt: skip
        name = held_out.dataset.dataset_name  # a video export or frame store names its dataset itself
        key = resolve_unnorm_key(stats, args.unnorm_key or name)
        held_out.dataset.dataset_statistics = {name: stats[key]}
        rows.append((path, key, "true", held_out.dataset.num_frames, held_out(vla)))
        if args.swap_instructions:  # the same frames, read once: only their prompts change
            held_out.dataset.swap_instructions()
            rows.append((path, key, "swapped", held_out.dataset.num_frames, held_out(vla)))
        del vla

    print(f"\n| checkpoint | statistics | instructions | val frames | {' | '.join(VAL_METRICS)} |")
    print("|---" * (4 + len(VAL_METRICS)) + "|")
    for path, key, instructions, frames, values in rows:
        print(f"| {path} | {key} | {instructions} | {frames} | "
              + " | ".join(f"{values[k]:.4f}" for k in VAL_METRICS) + " |")  # fmt: skip


if __name__ == "__main__":
    main()

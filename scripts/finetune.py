"""LoRA fine-tuning of an OpenVLA checkpoint on an RLDS dataset (or training a small VLA from random weights).

    python scripts/finetune.py --config configs/libero_spatial.yaml [--field value ...] [--resume]
    torchrun --standalone --nnodes 1 --nproc-per-node 2 scripts/finetune.py --config configs/libero_spatial.yaml

`--config` and `--config_path` are the same flag; nested fields are set like `--data.dataset_name NAME`. `--resume`
continues the run directory from its last checkpoint. Every field is documented in `vla.training.TrainConfig`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import draccus

from vla.training import TrainConfig, train


def normalize_argv(argv: list[str]) -> list[str]:
    """`--config X` -> `--config_path X` (draccus only knows the latter); a bare `--resume` -> `--resume true`."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            arg = arg.replace("--config", "--config_path", 1)
        if arg == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            arg = "--resume=true"
        out.append(arg)
    return out


def parse(argv: list[str]) -> TrainConfig:
    return draccus.parse(TrainConfig, args=normalize_argv(argv))


def main(cfg: TrainConfig) -> Path:
    """Run one fine-tuning job; returns its run directory."""
    run_dir = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        logging.getLogger("finetune").info("run directory: %s", run_dir)
    return run_dir


if __name__ == "__main__":
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    main(parse(sys.argv[1:]))

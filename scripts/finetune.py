"""LoRA fine-tuning of an OpenVLA checkpoint (or training a small VLA from random weights).

    python scripts/finetune.py --config configs/libero_spatial.yaml [--section.field value ...] [--resume]
    torchrun --standalone --nnodes 1 --nproc-per-node 2 scripts/finetune.py --config configs/libero_spatial.yaml
    python scripts/finetune.py --vla_path openvla/openvla-7b --data_root_dir datasets/modified_libero_rlds \
        --dataset_name libero_spatial_no_noops --batch_size 16        # the official flags work as they are

`--config` and `--config_path` are the same flag; nested fields are set like `--data.dataset_name NAME`. `--resume`
continues the run directory from its last checkpoint. Every field: `vla.train_config.TrainConfig`; the official
flag names and the defaults that differ from the official script: docs/DROP_IN.md.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from vla.runtime import configure_logging
from vla.train_cli import parse
from vla.train_config import TrainConfig
from vla.training import train

__all__ = ["main", "parse"]


def main(cfg: TrainConfig) -> Path:
    """Run one fine-tuning job; returns its run directory."""
    run_dir = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        logging.getLogger("finetune").info("run directory: %s", run_dir)
    return run_dir


if __name__ == "__main__":
    configure_logging(int(os.environ.get("RANK", "0")))
    main(parse(sys.argv[1:]))

"""Merge a LoRA adapter into its base model -> a full checkpoint in the official OpenVLA layout (loads with
`VLA.from_pretrained` and with the official code), streamed tensor by tensor; prints the peak host memory.

    python scripts/merge_lora.py --run_dir runs/my-run --out runs/my-run/merged-full
    python scripts/merge_lora.py --adapter runs/my-run/adapter --base openvla/openvla-7b --out merged/

Every field is documented in `vla.merge.MergeConfig`.
"""

from __future__ import annotations

from pathlib import Path

import draccus

from vla.merge import MergeConfig, merge, peak_rss_gib
from vla.runtime import configure_logging


def main(cfg: MergeConfig) -> Path:
    out = merge(cfg)
    print(f"merged checkpoint: {out}\npeak RSS: {peak_rss_gib():.2f} GiB")
    return out


if __name__ == "__main__":
    configure_logging()
    main(draccus.parse(MergeConfig))

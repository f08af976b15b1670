"""Rewrite a checkpoint (official layout: a directory or hub id) with its weights in another dtype, e.g. a float32
training save as float16 to ship it (half the bytes; the repository's checkpoints/micro-libero-spatial was made so):

    python scripts/convert_checkpoint.py --checkpoint runs/micro-libero-spatial/merged--3000_chkpt \
        --out checkpoints/micro-libero-spatial --dtype float16

`--dtype int8` writes this project's int8 format instead (`vla.checkpoint_int8`: int8 weights with per-row scales,
lm_head's action rows only; ~1/3 of float16 for the small presets), which `VLA.from_pretrained` reads but the
official code does not: for shipping small models in git. Fine-tuning refuses it as is; converted back with
`--dtype bfloat16` it is a float checkpoint to continue from (its rounded weights, lm_head's other rows zeros):

    python scripts/convert_checkpoint.py --checkpoint checkpoints/small-libero-spatial --out /tmp/init --dtype bfloat16

The output loads with `VLA.from_pretrained` like the input; the script prints the largest weight change the rounding
made (for int8: over the weights an action can depend on) and the size written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vla.checkpoint import save_official_checkpoint
from vla.checkpoint_export import save_int8_checkpoint
from vla.model import VLA
from vla.runtime import configure_logging

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
INT8 = "int8"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="directory or hub id of the checkpoint to convert")
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--dtype", choices=[*sorted(DTYPES), INT8], default="float16")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it, or choose another --out")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    vla = VLA.from_pretrained(args.checkpoint, device="cpu", dtype=torch.float32)
    if args.dtype == INT8:
        out = save_int8_checkpoint(vla, args.out, overwrite=args.overwrite)
        stored = VLA.from_pretrained(out, device="cpu", dtype=torch.float32).state_dict()
        lo, hi = vla.action_tokenizer.id_range
        worst = max((_action_rows(k, p, lo, hi) - _action_rows(k, stored[k], lo, hi)).abs().max().item()
                    for k, p in vla.state_dict().items())  # fmt: skip
    else:
        dtype = DTYPES[args.dtype]
        out = save_official_checkpoint(vla, args.out, dtype=dtype, overwrite=args.overwrite)
        worst = max(((p - p.to(dtype).float()).abs().max().item() for p in vla.state_dict().values()), default=0.0)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out} ({args.dtype}, {size / 1e6:.1f} MB of weights); largest rounding change {worst:.2e}")
    return out


def _action_rows(key: str, tensor: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """lm_head's action rows (the only ones an int8 checkpoint keeps); any other tensor whole."""
    return tensor[lo : hi + 1] if key.endswith("lm_head.weight") else tensor


if __name__ == "__main__":
    configure_logging()
    main()

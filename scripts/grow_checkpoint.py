"""A deeper copy of a checkpoint that predicts the same actions (`vla.grow`: added Llama layers and vision-tower
blocks start as the identity), to continue a trained model with more capacity:

    python scripts/grow_checkpoint.py --checkpoint checkpoints/small-libero-spatial --out /tmp/grown \
        --add_llm_layers 4 --dtype bfloat16

The input may be any checkpoint `VLA.from_pretrained` reads (an int8 one comes out as float weights, its lm_head rows
outside the action ids zeros, as `convert_checkpoint.py` writes them). `learning_proof.sh` runs this on its INIT when
GROW is set (GROW="--add_llm_layers 4").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vla.checkpoint import read_official_checkpoint, save_official_checkpoint
from vla.grow import grow
from vla.model import build_vla
from vla.runtime import configure_logging

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="directory or hub id of the checkpoint to grow")
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--add_llm_layers", type=int, default=0, help="Llama layers to add")
    parser.add_argument("--add_tower_blocks", type=int, default=0, help="blocks to add to each vision tower")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.add_llm_layers < 0 or args.add_tower_blocks < 0 or args.add_llm_layers + args.add_tower_blocks == 0:
        parser.error("pass --add_llm_layers N and/or --add_tower_blocks N (N >= 1)")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it, or choose another --out")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    parts = read_official_checkpoint(args.checkpoint, dtype=torch.float32)
    before = sum(v.numel() for v in parts.state_dict.values())
    parts = grow(parts, args.add_llm_layers, args.add_tower_blocks)
    vla = build_vla(parts.config, parts.tokenizer, state_dict=parts.state_dict, image_processor=parts.image_processor,
                    norm_stats=parts.norm_stats)  # fmt: skip
    out = save_official_checkpoint(vla, args.out, dtype=DTYPES[args.dtype], overwrite=args.overwrite)
    after = sum(p.numel() for p in vla.state_dict().values())
    depths = [o.get("depth") for o in parts.config.vision.overrides]
    print(f"wrote {out}: {parts.config.num_hidden_layers} Llama layers, tower depths {depths}, "
          f"{before / 1e6:.2f}M -> {after / 1e6:.2f}M parameters ({args.dtype})")  # fmt: skip
    return out


if __name__ == "__main__":
    configure_logging()
    main()

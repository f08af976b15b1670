"""Write a random-weight checkpoint of a preset in the official OpenVLA layout (and optionally a random LoRA adapter
for it): the stand-in for `openvla/openvla-7b` where no hub is reachable. Speed and memory depend on shapes, not on
values, so benchmarks and end-to-end timings (`eval.py --checkpoint`, `serve.py`, `merge_lora.py`) run on it.

    python scripts/make_checkpoint.py --preset full --tokenizer ../shared/tokenizers/llama2 --out /tmp/openvla-random \
        --device cuda --adapter /tmp/openvla-random-adapter

The action statistics (`norm_stats`) are synthetic — the LIBERO-like bounds ±0.9375 for the six motion dimensions and
a 0/1 gripper — under every `--unnorm_key` given, so `eval.py` and `serve.py` find the key they ask for.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vla.runtime import configure_logging, seed_everything

MOTION_BOUND = 0.9375  # LIBERO's deltas reach ±0.9375 (the controller's scale of 1 / 16 steps)


def synthetic_stats(num_transitions: int = 50_000) -> dict:
    """Action statistics in the official `norm_stats[key]` layout (q01/q99 bounds, gripper unnormalized)."""
    low, high = [-MOTION_BOUND] * 6 + [0.0], [MOTION_BOUND] * 6 + [1.0]
    action = {"mean": [0.0] * 6 + [0.5], "std": [0.3] * 6 + [0.5], "min": low, "max": high, "q01": low,
              "q99": high, "mask": [True] * 6 + [False]}  # fmt: skip
    return {"action": action, "num_transitions": num_transitions, "num_trajectories": num_transitions // 100}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="full", choices=["tiny", "micro", "small", "small256", "full"])
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory holding Llama-2's tokenizer.model")
    parser.add_argument("--out", type=Path, required=True, help="new checkpoint directory (must not exist)")
    parser.add_argument("--unnorm_key", nargs="+", default=["libero_spatial", "libero_object", "libero_goal",
                        "libero_10"], help="norm_stats keys to write (synthetic statistics)")  # fmt: skip
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--device", default="cpu", help="where the random weights are drawn (cuda is much faster)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_shard_gb", type=float, default=5.0, help="GB per safetensors shard (official: ~5)")
    parser.add_argument("--adapter", type=Path, help="also write a random LoRA adapter (nonzero B) here")
    parser.add_argument("--lora_rank", type=int, default=32)
    args = parser.parse_args(argv)
    for path in (args.out, args.adapter):
        if path is not None and path.exists():
            parser.error(f"{path} exists; choose a new directory")
    if not (args.tokenizer / "tokenizer.model").is_file():
        parser.error(f"{args.tokenizer} has no tokenizer.model; pass the Llama-2 tokenizer directory")
    return args


def main(args: argparse.Namespace) -> Path:
    from vla.checkpoint import load_tokenizer, save_official_checkpoint
    from vla.lora import LoraSettings, apply_lora, lora_layers, save_adapter
    from vla.model import build_vla
    from vla.model_config import VLAConfig

    seed_everything(args.seed)
    dtype = getattr(torch, args.dtype)
    stats = {key: synthetic_stats() for key in args.unnorm_key}
    vla = build_vla(VLAConfig.preset(args.preset), load_tokenizer(args.tokenizer), norm_stats=stats,
                    device=args.device, dtype=dtype)  # fmt: skip
    save_official_checkpoint(vla, args.out, dtype=dtype, max_shard_size=int(args.max_shard_gb * 1e9))
    print(f"checkpoint: {args.out}")
    if args.adapter is not None:
        apply_lora(vla, LoraSettings(rank=args.lora_rank))
        with torch.no_grad():  # peft starts B at zero (a no-op adapter): make the merge change every weight
            for layer in lora_layers(vla).values():
                for b in layer.lora_B.values():
                    b.weight.normal_(0, 0.01)
        save_adapter(vla, args.adapter)
        print(f"adapter: {args.adapter}")
    return args.out


if __name__ == "__main__":
    configure_logging()
    main(parse())

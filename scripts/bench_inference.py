"""`predict_action` latency and batched `predict_actions` throughput at full size with random weights.

    python scripts/bench_inference.py --tokenizer DIR --quantization bf16 --quantization 8bit --batch 1 --batch 8

Prints one row per (quantization, batch): peak allocated GiB, ms per call, actions/s, and the ratio to the first row.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import torch

from vla.checkpoint import load_tokenizer
from vla.model import VLAConfig, build_vla
from vla.normalization import compute_action_stats

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


def bench(vla, batch: int, iters: int, warmup: int) -> float:
    """Mean seconds per `predict_actions` call on `batch` random 224x224 images."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch)]
    for _ in range(warmup):
        vla.predict_actions(images, [INSTRUCTION] * batch)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        vla.predict_actions(images, [INSTRUCTION] * batch)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="directory with Llama-2's tokenizer.model")
    parser.add_argument("--preset", default="full", choices=["full", "tiny"])
    parser.add_argument("--quantization", action="append", choices=["bf16", "8bit", "4bit"], required=True)
    parser.add_argument("--batch", action="append", type=int, required=True)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_inference needs a CUDA device")
    stats = {"bench": {"action": compute_action_stats(np.random.default_rng(0).uniform(-1, 1, (100, 7)))}}
    rows = []
    for quantization in args.quantization:
        vla = build_vla(
            VLAConfig.preset(args.preset), load_tokenizer(args.tokenizer), norm_stats=stats, device="cuda",
            dtype=torch.bfloat16, quantization=None if quantization == "bf16" else quantization,
        ).eval()  # fmt: skip
        for batch in args.batch:
            torch.cuda.reset_peak_memory_stats()
            seconds = bench(vla, batch, args.iters, args.warmup)
            rows.append((f"{quantization} batch {batch}", torch.cuda.max_memory_allocated() / 2**30, seconds, batch))
        del vla
        gc.collect()
        torch.cuda.empty_cache()
    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"| case | peak alloc GiB | ms / call | Hz (calls/s) | actions/s | actions/s vs {rows[0][0]} |")
    print("|---|---|---|---|---|---|")
    base = rows[0][3] / rows[0][2]
    for name, peak, seconds, batch in rows:
        print(f"| {name} | {peak:.1f} | {1000 * seconds:.1f} | {1 / seconds:.2f} | {batch / seconds:.1f} | "
              f"{batch / seconds / base:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()

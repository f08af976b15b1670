"""Fine-tuning throughput and peak memory of the VLA at full size with random weights (shapes decide cost).

    python scripts/bench_finetune.py --tokenizer DIR --case bf16,1,4 --case 8bit,1,4 --case bf16,8,1,ckpt

Each --case is `quantization,micro_batch,grad_accumulation[,ckpt]` (quantization: bf16 | 8bit | 4bit). Prints one row
per case: peak allocated / reserved GiB and samples/s, with the ratio to the first case measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import torch

from vla import collate
from vla.checkpoint import load_tokenizer
from vla.lora import LoraSettings, count_parameters
from vla.model import VLAConfig, build_vla

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


def make_batch(vla, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """A LIBERO-shaped micro-batch: real prompt ids + random action ids, random pixels."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(batch_size):
        input_ids, labels = vla.sequence_builder.training_sample(INSTRUCTION, rng.uniform(-1, 1, 7))
        samples.append({"input_ids": input_ids, "labels": labels, "pixel_values": torch.randn(6, 224, 224)})
    return collate(samples)


def run_case(args, quantization: str, micro_batch: int, accumulation: int, checkpointing: bool) -> dict:
    tokenizer = load_tokenizer(args.tokenizer)
    quant = None if quantization == "bf16" else quantization
    vla = build_vla(
        VLAConfig.preset(args.preset), tokenizer, quantization=quant, lora=LoraSettings(rank=32),
        device="cuda", dtype=torch.bfloat16,
    )  # fmt: skip
    trainable, total = count_parameters(vla)
    if checkpointing:
        vla.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vla.train()
    optimizer = torch.optim.AdamW([p for p in vla.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.01)
    batches = [make_batch(vla, micro_batch, seed) for seed in range(accumulation)]
    batches = [{k: v.cuda() for k, v in b.items()} for b in batches]

    def optimizer_step() -> None:
        for batch in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = vla(batch)
            (loss / accumulation).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        optimizer_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        optimizer_step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    row = {
        "case": f"{quantization} mb{micro_batch} x ga{accumulation}" + (" +ckpt" if checkpointing else ""),
        "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "samples_per_s": args.steps * micro_batch * accumulation / elapsed,
        "trainable": trainable,
        "total": total,
    }
    del vla, optimizer, batches
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="directory with Llama-2's tokenizer.model")
    parser.add_argument("--preset", default="full", choices=["full", "tiny"])
    parser.add_argument("--case", action="append", required=True, help="quantization,micro_batch,accum[,ckpt]")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps per case")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per case")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_finetune needs a CUDA device")
    rows = []
    for spec in args.case:
        parts = spec.split(",")
        rows.append(run_case(args, parts[0], int(parts[1]), int(parts[2]), len(parts) > 3 and parts[3] == "ckpt"))
        print(f"trainable params: {rows[-1]['trainable']:,} || all params: {rows[-1]['total']:,} || "
              f"trainable%: {100 * rows[-1]['trainable'] / rows[-1]['total']:.4f}", flush=True)  # fmt: skip
    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"| case | peak alloc GiB | peak reserved GiB | samples/s | vs {rows[0]['case']} |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = r["samples_per_s"] / rows[0]["samples_per_s"]
        print(f"| {r['case']} | {r['peak_alloc_gib']:.1f} | {r['peak_reserved_gib']:.1f} | "
              f"{r['samples_per_s']:.2f} | {ratio:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()

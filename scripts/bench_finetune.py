"""Fine-tuning throughput and peak memory of the VLA at full size with random weights (shapes decide cost).

    python scripts/bench_finetune.py --tokenizer DIR --case bf16,1,4 --case 8bit,1,4,w8,bf16in --case bf16,24,1,fast

Each --case is `quantization,micro_batch,grad_accumulation[,option...]` (quantization: bf16 | 8bit | 4bit | fp8).
Options, the `vla.speedups` switches that `TrainConfig` exposes: `ckpt` (checkpoint all Llama layers) or `ckpt=N` (the first
N), `vis` (checkpoint the vision-tower blocks), `bf16in` (LoRA inputs stay bf16), `w8` (weight-only int8 matmuls),
`fuse` (LoRA scale + add fused into the matmul), `exp` (expandable CUDA segments), `compile` (torch.compile of each
Llama decoder layer: the warm-up steps include its compilation), `cvis` (torch.compile of each vision-tower block);
`fast` = ckpt,vis,bf16in,exp.
Prints one row per case: peak allocated / reserved GiB, samples/s, the ratio to the first case, and the first
micro-batch's loss (same seed -> same weights, so cases of one quantization must agree). `--profile K` adds a
torch.profiler table of one optimizer step of case K.
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
from vla.speedups import apply_training_speedups

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"
FAST = ("ckpt", "vis", "bf16in", "exp")


def make_batch(vla, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """A LIBERO-shaped micro-batch: real prompt ids + random action ids, random pixels."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(batch_size):
        input_ids, labels = vla.sequence_builder.training_sample(INSTRUCTION, rng.uniform(-1, 1, 7))
        pixels = torch.from_numpy(rng.standard_normal((6, 224, 224), dtype=np.float32))
        samples.append({"input_ids": input_ids, "labels": labels, "pixel_values": pixels})
    return collate(samples)


def speedup_kwargs(options: list[str], num_layers: int) -> dict:
    options = [o for opt in options for o in (FAST if opt == "fast" else (opt,))]
    kwargs = {"checkpoint_llm_layers": None}
    for opt in options:
        if opt == "ckpt" or opt.startswith("ckpt="):
            kwargs["checkpoint_llm_layers"] = num_layers if opt == "ckpt" else int(opt.split("=")[1])
        elif opt in ("vis", "bf16in", "fuse", "w8", "exp", "compile", "cvis"):
            key = {"vis": "checkpoint_vision", "bf16in": "lora_bf16_inputs", "fuse": "lora_fused",
                   "w8": "int8_weight_only", "exp": "expandable_segments", "compile": "compile_llm_layers",
                   "cvis": "compile_vision"}[opt]  # fmt: skip
            kwargs[key] = True
        else:
            raise SystemExit(f"unknown case option {opt!r}; see --help")
    return kwargs


def run_case(args, spec: str, profile: bool) -> dict:
    quantization, micro_batch, accumulation, *options = spec.split(",")
    micro_batch, accumulation = int(micro_batch), int(accumulation)
    torch.manual_seed(0)
    config = VLAConfig.preset(args.preset)
    vla = build_vla(
        config, load_tokenizer(args.tokenizer), quantization=None if quantization == "bf16" else quantization,
        lora=LoraSettings(rank=32), device="cuda", dtype=torch.bfloat16,
    )  # fmt: skip
    trainable, total = count_parameters(vla)
    torch.cuda.empty_cache()  # random 8/4-bit weights are quantized from a bf16 copy: drop its cached blocks
    apply_training_speedups(vla, **speedup_kwargs(options, config.num_hidden_layers))
    vla.train()
    optimizer = torch.optim.AdamW([p for p in vla.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.01)
    batches = [make_batch(vla, micro_batch, seed) for seed in range(accumulation)]
    batches = [{k: v.cuda() for k, v in b.items()} for b in batches]
    losses = []

    def optimizer_step() -> None:
        for batch in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = vla(batch)  # the metrics sync with the host, as the training loop's do
            (loss / accumulation).backward()
            losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    row = {"case": spec, "trainable": trainable, "total": total}
    try:
        for _ in range(args.warmup):
            optimizer_step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            optimizer_step()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        row |= {
            "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "samples_per_s": args.steps * micro_batch * accumulation / elapsed,
            "first_loss": losses[0],
        }
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                optimizer_step()
                torch.cuda.synchronize()
            print(f"\n### profile of one optimizer step, case {spec}")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))
    except torch.OutOfMemoryError:
        row |= {"oom": True, "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="directory with Llama-2's tokenizer.model")
    parser.add_argument("--preset", default="full", choices=["full", "tiny"])
    parser.add_argument("--case", action="append", required=True, help="quantization,micro_batch,accum[,option...]")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps per case")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per case")
    parser.add_argument("--profile", type=int, action="append", default=[], help="profile case K (0-based)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_finetune needs a CUDA device")
    rows = []
    for index, spec in enumerate(args.case):
        rows.append(run_case(args, spec, index in args.profile))
        gc.collect()  # the case's model, optimizer and batches went out of scope with run_case
        torch.cuda.empty_cache()
        torch.cuda.memory._set_allocator_settings("expandable_segments:False")
        r = rows[-1]
        speed = "OOM" if r.get("oom") else f"{r['samples_per_s']:.2f} samples/s"
        print(f"{spec}: {speed}, peak reserved {r['peak_reserved_gib']:.1f} GiB; trainable {r['trainable']:,} of "
              f"{r['total']:,}", flush=True)  # fmt: skip
    base = rows[0].get("samples_per_s")
    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"| case | peak alloc GiB | peak reserved GiB | samples/s | vs {rows[0]['case']} | first loss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r.get("oom"):
            print(f"| {r['case']} | OOM | > {r['peak_reserved_gib']:.1f} | - | - | - |")
            continue
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        print(f"| {r['case']} | {r['peak_alloc_gib']:.1f} | {r['peak_reserved_gib']:.1f} | {r['samples_per_s']:.2f} | "
              f"{ratio} | {r['first_loss']:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()

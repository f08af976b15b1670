"""`predict_action` latency and batched `predict_actions` throughput at full size with random weights, plain decoding
vs `VLA.enable_fast_decoding` (static KV cache + CUDA graphs) in the same run, and their token agreement.

    python scripts/bench_inference.py --tokenizer DIR --quantization bf16 --quantization 8bit --batch 1 --batch 8

`--fused` adds a "fast+fused" path (one q/k/v and one gate/up matmul over the same weights, lm_head's action rows
only) and `--compile [MODE]` a "fast+compile" path (the same plus `torch.compile`d elementwise ops); a failure there
is printed and the other rows still come.

Prints one row per (quantization, path, batch): peak allocated / reserved GiB, median ms per call, calls/s, actions/s
and the speed-up over the plain path; then the share of action tokens the fast path gives identically to the plain
path over `--agree` fixed inputs (4 instructions of different lengths, batches of 8 with padding and single calls).
`--profile` adds a stage breakdown and torch.profiler tables of one plain and one fast batch-1 call.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import traceback

import numpy as np
import torch

from vla.checkpoint import load_tokenizer
from vla.model import VLAConfig, build_vla
from vla.normalization import compute_action_stats

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"
AGREE_INSTRUCTIONS = (
    INSTRUCTION, "open the top drawer and put the bowl inside", "turn on the stove",
    "put both the alphabet soup and the cream cheese box in the basket",
)  # fmt: skip


def images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(n)]


def time_calls(vla, quantization: str, path: str, batch: int, iters: int, warmup: int) -> dict:
    """Median seconds per `predict_actions` call on `batch` random 224x224 images (the call returns host numpy, so
    each call is complete when it returns) and the peak memory of the calls (warm-up and graph capture included)."""
    frames, texts = images(batch, 0), [INSTRUCTION] * batch
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    vla.predict_actions(frames, texts)  # the first call captures the graph (and compiles): reported apart
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        vla.predict_actions(frames, texts)
    seconds = []
    for _ in range(iters):
        start = time.perf_counter()
        vla.predict_actions(frames, texts)
        seconds.append(time.perf_counter() - start)
    return {
        "quantization": quantization,
        "path": path,
        "batch": batch,
        "seconds": statistics.median(seconds),
        "first": first,
        "alloc": torch.cuda.max_memory_allocated() / 2**30,
        "reserved": torch.cuda.max_memory_reserved() / 2**30,
    }


def agreement_inputs(vla, count: int) -> tuple[torch.Tensor, list[list[int]]]:
    texts = [AGREE_INSTRUCTIONS[i % len(AGREE_INSTRUCTIONS)] for i in range(count)]
    return vla.image_processor(images(count, 1)), [vla.sequence_builder.inference_ids(t) for t in texts]


def action_ids(generate, pixel_values, prompts, batch: int) -> np.ndarray:
    return np.concatenate(
        [generate(pixel_values[i : i + batch], prompts[i : i + batch], 7) for i in range(0, len(prompts), batch)]
    )


def stage_breakdown(vla) -> str:
    """Milliseconds of each stage of one plain batch-1 call (host-synchronized between stages)."""
    from transformers import DynamicCache

    marks = [time.perf_counter()]

    def mark() -> None:
        torch.cuda.synchronize()
        marks.append(time.perf_counter())

    with torch.no_grad():
        pixel_values = vla.image_processor(images(1, 0))
        ids = torch.as_tensor([vla.sequence_builder.inference_ids(INSTRUCTION)], device=vla.device)
        mark()
        embeds, mask = vla.multimodal_inputs(pixel_values, ids, torch.ones_like(ids))
        mark()
        lm, cache = vla.language_model, DynamicCache()
        out = lm(inputs_embeds=embeds, attention_mask=mask, use_cache=True, past_key_values=cache, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1)
        mark()
        for _ in range(6):
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            out = lm(input_ids=token[:, None], attention_mask=mask, use_cache=True, past_key_values=cache)
            token = out.logits[:, -1].argmax(-1)
        mark()
    names = ("preprocess (host)", "towers + projector", "prefill", "6 decode steps")
    return ", ".join(f"{n} {1000 * (b - a):.1f} ms" for n, a, b in zip(names, marks[:-1], marks[1:], strict=True))


def profile_table(vla, label: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    frame = images(1, 0)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        vla.predict_actions(frame, [INSTRUCTION])
        torch.cuda.synchronize()
    print(f"\n### profile: {label}, one batch-1 call")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=50))
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(getattr(e, "self_device_time_total", 0) for e in kernels) / 1000
    print(f"{label}: {sum(e.count for e in kernels)} GPU kernels / copies, GPU busy {busy:.1f} ms")


def fast_paths(args) -> list[tuple[str, dict]]:
    """(label, `FastActionDecoder` keywords) of each fast path to time after the plain one."""
    paths = [("fast", {})]
    if args.fused:
        paths.append(("fast+fused", {"fuse_projections": True}))
    if args.compile:
        paths.append(("fast+compile", {"compile": args.compile}))
    return paths


def use_decoder(vla, options: dict):
    """Replace the model's fast decoder (its graphs and fused weights released first) by one with `options`."""
    from vla.fast_decode import FastActionDecoder

    vla.disable_fast_decoding()
    gc.collect()
    torch.cuda.empty_cache()  # the previous path's graph pools: each path's reserved peak is its own
    vla.fast_decoder = FastActionDecoder(vla, max_graphs=8, **options)
    return vla.fast_decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="directory with Llama-2's tokenizer.model")
    parser.add_argument("--preset", default="full", choices=["full", "tiny"])
    parser.add_argument("--quantization", action="append", choices=["bf16", "8bit", "4bit", "fp8"], required=True)
    parser.add_argument("--batch", action="append", type=int, required=True)
    parser.add_argument("--plain-batch", action="append", type=int, help="batches timed on the plain path (all)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--plain-iters", type=int, help="timed calls on the plain path (default: --iters)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (>= 1; the first is reported)")
    parser.add_argument("--agree", type=int, default=32, help="inputs in the token agreement check (0: skip)")
    parser.add_argument("--profile", action="store_true", help="stage breakdown + profiler tables (first quant.)")
    parser.add_argument("--fused", action="store_true", help="also time fused projections without compilation")
    parser.add_argument("--compile", nargs="?", const="default", help="also time compiled decoding (inductor mode)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_inference needs a CUDA device")
    stats = {"bench": {"action": compute_action_stats(np.random.default_rng(0).uniform(-1, 1, (100, 7)))}}
    rows, agreements, reference = [], [], {}
    for index, quantization in enumerate(args.quantization):
        torch.manual_seed(0)
        vla = build_vla(
            VLAConfig.preset(args.preset), load_tokenizer(args.tokenizer), norm_stats=stats, device="cuda",
            dtype=torch.bfloat16, quantization=None if quantization == "bf16" else quantization,
        ).eval()  # fmt: skip
        torch.cuda.empty_cache()  # random 8/4-bit weights are quantized from a bf16 copy: drop its cached blocks
        for batch in args.plain_batch or args.batch:
            rows.append(time_calls(vla, quantization, "plain", batch, args.plain_iters or args.iters, args.warmup))
            print(rows[-1], flush=True)
        if args.profile and index == 0:
            print(f"\n{quantization} plain stages: {stage_breakdown(vla)}")
            profile_table(vla, f"{quantization} plain")
        if args.agree:
            pixel_values, prompts = agreement_inputs(vla, args.agree)
            plain_8 = action_ids(vla.generate_action_ids, pixel_values, prompts, 8)
            plain_1 = action_ids(vla.generate_action_ids, pixel_values[:8], prompts[:8], 1)
            reference.setdefault("plain_1", plain_1)  # the first quantization's (bf16's) plain tokens
            agreements.append((quantization, "plain batch 8 vs plain batch 1", plain_8[:8], plain_1, plain_1,
                               reference["plain_1"]))  # fmt: skip
        for label, options in fast_paths(args):
            try:
                decoder = use_decoder(vla, options)
                for batch in args.batch:
                    rows.append(time_calls(vla, quantization, label, batch, args.iters, args.warmup))
                    print(rows[-1], flush=True)
                for name in ("graph_error", "compile_error"):
                    if getattr(decoder, name):
                        print(f"{quantization} {label}: {name}: {getattr(decoder, name)}")
                if args.profile and index == 0:
                    profile_table(vla, f"{quantization} {label}")
                if args.agree:
                    if label == "fast":  # the plain loop over the fast path's layers (weight-only int8 for 8-bit)
                        loop_8 = action_ids(vla.generate_action_ids, pixel_values, prompts, 8)
                        loop_1 = action_ids(vla.generate_action_ids, pixel_values[:8], prompts[:8], 1)
                    fast = decoder.generate_action_ids
                    fast_8 = action_ids(fast, pixel_values, prompts, 8)
                    fast_1 = action_ids(fast, pixel_values[:8], prompts[:8], 1)
                    agreements.append(
                        (quantization, f"{label}, batch 8 (padded)", fast_8, plain_8, loop_8, plain_1[:0])
                    )
                    agreements.append(
                        (quantization, f"{label}, batch 1", fast_1, plain_1, loop_1, reference["plain_1"])
                    )
                    del fast
            except Exception:  # a failing path (e.g. the compiler) must not cost the rows of the others
                print(f"{quantization} {label} failed:\n{traceback.format_exc()}", flush=True)
            decoder = None  # it holds the model
        vla.disable_fast_decoding()
        del vla
        gc.collect()
        torch.cuda.empty_cache()
    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print("| quantization | path | batch | peak alloc GiB | peak reserved GiB | ms / call | calls/s (Hz) | actions/s | "
          "speed-up vs plain | first call s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        plain = [
            p["seconds"]
            for p in rows
            if (p["quantization"], p["path"], p["batch"]) == (r["quantization"], "plain", r["batch"])
        ]
        ratio = f"{plain[0] / r['seconds']:.2f}x" if plain else "-"
        print(
            f"| {r['quantization']} | {r['path']} | {r['batch']} | {r['alloc']:.1f} | {r['reserved']:.1f} | "
            f"{1000 * r['seconds']:.1f} | {1 / r['seconds']:.2f} | {r['batch'] / r['seconds']:.1f} | {ratio} | "
            f"{r['first']:.1f} |"
        )
    if agreements:
        print(f"\n{args.agree} fixed inputs (batch 1: the first 8), 7 tokens each; the same seed gives every")
        print(f"quantization the same weights: the last column compares with {args.quantization[0]}'s plain batch 1.")
        print(
            "| quantization | tokens compared | fast = plain | fast = plain loop over fast's layers | = first plain |"
        )
        print("|---|---|---|---|---|")
        for quantization, name, ids, plain, loop, first in agreements:
            vs_first = f"{(ids == first).mean():.4f} (plain {(plain == first).mean():.4f})" if first.size else "-"
            print(
                f"| {quantization} | {name} | {(ids == plain).mean():.4f} | {(ids == loop).mean():.4f} | {vs_first} |"
            )


if __name__ == "__main__":
    main()

"""The weight-only int8 matmul paths of `vla.int8_linear` against cuBLAS bf16, for the 7B Llama's projections (CUDA
only):

    python scripts/bench_int8_gemv.py --rows 1 2 8 16 64 296 [--graph]

For each weight shape (q/k/v/o, fused q/k/v, gate/up, fused gate/up, down) and input rows, the median µs per call of
(a) `F.linear` with a bf16 weight of the same shape, (b) the Triton kernel `w8a16_matmul` that reads the int8 weights
directly (what `int8_linear` runs for up to GEMV_MAX_ROWS rows: decode steps), (c) `dequantize` into a bf16
temporary + cuBLAS (what it runs for more than WEIGHT_FIRST_MAX_ROWS rows: the prefill, ~296 rows at batch 1) and,
for more than 16 rows, (d) `w8a16_weight_first_matmul`, the same arithmetic as (b) with the weight as the dot's first
operand (Hopper's wgmma reads that one from registers, where the int8 tile is converted) and larger tiles (what it
runs in between: batched decode steps). The table says whether the two thresholds sit where (b), (d) and (c) cross,
and how close (b) gets to the card's bandwidth. Also (e), a candidate not used by the package: W8A8, the activations
quantized per row (absmax, as LLM.int8 does outside its outlier columns) and `torch._int_mm` on the int8 tensor
cores; it changes the numerics (its error column says by how much on these random tensors, which have no outlier
features), and `_int_mm` alone on an input already int8: the floor of a kernel that would fuse the quantization and
the scales.

Each timed batch runs `--calls` calls over enough copies of the weight that they do not fit in L2 (as in decoding,
where each layer's weights are read once a step); in eager mode a GPU sleep first lets the launches queue up, so the
times are the GPU's, not Python's; with `--graph` the batch is one captured CUDA graph, as decoding runs. GB/s =
weight bytes (2 N K for bf16, N K for int8) / time. Errors: max |out - ref| / max |ref| against the fp32 product with
the dequantized weight.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

SHAPES = {"q/k/v/o 4096x4096": (4096, 4096), "qkv 12288x4096": (12288, 4096), "gate/up 11008x4096": (11008, 4096),
          "gate+up 22016x4096": (22016, 4096), "down 4096x11008": (4096, 11008)}  # fmt: skip
L2_BYTES = 256 << 20  # the weight copies of a batch span at least this much (H100 L2: 50 MB, H200: 60 MB)


def median_us(batch, calls: int, iters: int) -> float:
    """Median over `iters` of the GPU time of `batch()` (which runs `calls` calls) per call."""
    for _ in range(3):
        batch()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(10_000_000)  # ~5 ms of GPU wait, while the host queues the batch
        start.record()
        batch()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return sorted(times)[len(times) // 2]


def timed(fn, args: list[tuple], calls: int, iters: int, graph: bool) -> float:
    """Time `calls` calls of fn, the i-th on args[i % len(args)]; eagerly or replaying one captured CUDA graph."""

    def batch():
        for i in range(calls):
            fn(*args[i % len(args)])

    if not graph:
        return median_us(batch, calls, iters)
    batch()  # autotuning and compilation stay out of the capture
    torch.cuda.synchronize()
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        batch()
    return median_us(cuda_graph.replay, calls, iters)


def row(name: str, n: int, k: int, rows: int, args: argparse.Namespace, gen: torch.Generator) -> str:
    from vla import int8_kernels as K

    device = torch.device("cuda")
    copies = max(1, -(-L2_BYTES // (n * k)))
    x = torch.randn(rows, k, device=device, generator=gen).to(torch.bfloat16)
    weights = []
    for _ in range(copies):
        w = torch.randn(n, k, device=device, generator=gen) * 0.02
        scale = w.abs().amax(1) / 127
        cb = torch.round(w / scale[:, None]).to(torch.int8)
        weights.append((cb, scale, K.dequantize(cb, scale, torch.bfloat16)))
    cublas = timed(F.linear, [(x, w) for _, _, w in weights], args.calls, args.iters, args.graph)
    direct = timed(K.w8a16_matmul, [(x, cb, s) for cb, s, _ in weights], args.calls, args.iters, args.graph)
    staged = timed(dequantized_linear, [(x, cb, s) for cb, s, _ in weights], args.calls, args.iters, args.graph)
    cb, scale, _ = weights[0]
    reference = x.float() @ (cb.float() * scale[:, None]).t()
    errors = [((out.float() - reference).abs().max() / reference.abs().max()).item()
              for out in (K.w8a16_matmul(x, cb, scale), dequantized_linear(x, cb, scale))]  # fmt: skip
    w8a8, first = "—", "—"
    if rows > 16:  # torch._int_mm's minimum on CUDA; the weight-first kernel's rows start above GEMV_MAX_ROWS
        first_us = timed(K.w8a16_weight_first_matmul, [(x, cb, s) for cb, s, _ in weights], args.calls, args.iters,
                         args.graph)  # fmt: skip
        out = K.w8a16_weight_first_matmul(x, cb, scale).float()
        error = ((out - reference).abs().max() / reference.abs().max()).item()
        ratios = f"{cublas / first_us:.2f}x cuBLAS bf16, {staged / first_us:.2f}x dequantize"
        first = f"{first_us:.1f} ({ratios}; error {error:.1e})"
        w8a8_us = timed(w8a8_linear, [(x, cb, s) for cb, s, _ in weights], args.calls, args.iters, args.graph)
        error = ((w8a8_linear(x, cb, scale).float() - reference).abs().max() / reference.abs().max()).item()
        # the int8 tensor-core matmul alone, its input already int8: the floor of a kernel that fuses the rest
        x_int8 = quantize_rows(x)[0]
        int_mm = timed(lambda a, b: torch._int_mm(a, b.t()), [(x_int8, cb) for cb, _, _ in weights], args.calls,
                       args.iters, args.graph)  # fmt: skip
        w8a8 = f"{w8a8_us:.1f} ({cublas / w8a8_us:.2f}x cuBLAS bf16, error {error:.1e}; `_int_mm` alone {int_mm:.1f})"
    gbs = [bytes_ / us / 1000 for bytes_, us in ((2 * n * k, cublas), (n * k, direct))]
    return (f"| {name} | {rows} | {cublas:.1f} | {direct:.1f} | {staged:.1f} | {gbs[0]:.0f} | {gbs[1]:.0f} | "
            f"{cublas / direct:.2f}x | {staged / direct:.2f}x | {errors[0]:.1e} | {errors[1]:.1e} | {first} "
            f"| {w8a8} |")  # fmt: skip


def w8a8_linear(x: torch.Tensor, cb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The candidate: x quantized per row to int8 (absmax / 127), int8 x int8 -> int32 on the tensor cores, both scales
    applied to the fp32 result."""
    x_int8, x_scale = quantize_rows(x)
    return (torch._int_mm(x_int8, cb.t()).float() * x_scale[:, None] * scale[None, :]).to(x.dtype)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x as int8 per row (absmax / 127) and the rows' scales."""
    x_scale = x.float().abs().amax(1).clamp(min=1e-8) / 127
    return torch.round(x.float() / x_scale[:, None]).to(torch.int8), x_scale


def dequantized_linear(x: torch.Tensor, cb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`int8_linear`'s path for many rows: the weight dequantized to x's dtype, then cuBLAS."""
    from vla import int8_kernels as K

    return F.linear(x, K.dequantize(cb, scale, x.dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8, 16, 64, 296])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--calls", type=int, default=20, help="calls per timed batch (per captured graph)")
    parser.add_argument("--iters", type=int, default=30, help="timed batches; the median is reported")
    parser.add_argument("--graph", action="store_true", help="time each batch as one captured CUDA graph")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (the int8 kernels are Triton kernels for CUDA)")
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
          f"{'CUDA graph' if args.graph else 'eager'}, {args.calls} calls a batch")  # fmt: skip
    print("| shape | rows | cuBLAS bf16 µs | w8a16_matmul µs | dequantize + cuBLAS µs | cuBLAS GB/s | w8a16_matmul GB/s "
          "| w8a16_matmul vs cuBLAS bf16 | w8a16_matmul vs dequantize | w8a16_matmul error | dequantize error "
          "| w8a16_weight_first_matmul µs "
          "| W8A8 `_int_mm` µs (candidate; the int8 matmul alone) |")  # fmt: skip
    print("|---" * 13 + "|")
    gen = torch.Generator("cuda").manual_seed(0)
    for name in args.shapes:
        n, k = SHAPES[name]
        for rows in args.rows:
            print(row(name, n, k, rows, args, gen), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""FP8 (vla.fp8_linear) against bf16 for the 7B Llama's projection shapes, one matmul at a time (CUDA, FP8 cards):

    python scripts/bench_fp8_matmul.py --rows 1 16 290 4640

Rows: 1 and 16 are decode steps (batch 1 / 16), 290 one prefill (256 image tokens + a LIBERO prompt), 4640 a prefill
of batch 16. Prints one table row per (shape, rows): median µs of the bf16 matmul, of `fp8_matmul` (input rows
quantized at every call, as the model runs it) with the five torch kernels and with the fused Triton kernel (the
model's default on CUDA), and of `torch._scaled_mm` alone (inputs quantized beforehand), the ratios to bf16, and
each path's error against the fp32 product (relative Frobenius norm).
"""

from __future__ import annotations

import argparse

import torch

from vla.fp8_linear import FP8, fp8_matmul, quantize_rows

SHAPES = {"q/k/v/o 4096x4096": (4096, 4096), "gate/up 11008x4096": (11008, 4096), "down 4096x11008": (4096, 11008)}


def median_us(fn, iters: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 290, 4640])
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA card with FP8 tensor cores (compute capability >= 8.9)")
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print("| shape | rows | bf16 µs | fp8, torch quantize µs | fp8, fused quantize µs | _scaled_mm alone µs | "
          "bf16 / torch quantize | bf16 / fused | bf16 / _scaled_mm | bf16 error | fp8 error |")  # fmt: skip
    print("|---" * 11 + "|")
    gen = torch.Generator(device).manual_seed(0)
    for name, (n, k) in SHAPES.items():
        weight = (torch.randn(n, k, device=device, generator=gen) * 0.02).to(torch.bfloat16)
        for rows in args.rows:
            x = torch.randn(rows, k, device=device, generator=gen).to(torch.bfloat16)
            print(row(name, weight, x, args.iters))


def row(name: str, weight: torch.Tensor, x: torch.Tensor, iters: int) -> str:
    w8, w_scale = quantize_rows(weight)
    w8 = w8.view(torch.uint8)
    x8, x_scale = quantize_rows(x)
    bf16 = median_us(lambda: x @ weight.t(), iters)
    fp8 = median_us(lambda: fp8_matmul(x, w8, w_scale, torch.bfloat16, fused_quantize=False), iters)
    fused = median_us(lambda: fp8_matmul(x, w8, w_scale, torch.bfloat16, fused_quantize=True), iters)
    alone = median_us(lambda: torch._scaled_mm(x8, w8.view(FP8).t(), scale_a=x_scale, scale_b=w_scale.t(),
                                               out_dtype=torch.bfloat16), iters)  # fmt: skip
    reference = x.float() @ weight.float().t()
    errors = [((out.float() - reference).norm() / reference.norm()).item()
              for out in (x @ weight.t(), fp8_matmul(x, w8, w_scale, torch.bfloat16))]  # fmt: skip
    return (f"| {name} | {x.shape[0]} | {bf16:.1f} | {fp8:.1f} | {fused:.1f} | {alone:.1f} | {bf16 / fp8:.2f}x | "
            f"{bf16 / fused:.2f}x | {bf16 / alone:.2f}x | {errors[0]:.2e} | {errors[1]:.2e} |")  # fmt: skip


if __name__ == "__main__":
    main()

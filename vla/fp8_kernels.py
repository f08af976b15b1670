"""Triton kernel for `vla.fp8_linear`: quantize the rows of a matmul's input to e4m3 in one pass. The torch version
takes five kernels (row abs-max, two on the scale, a divide, the cast); in a decode step they run for each of the 224
projections, and on an H100 they cost more than the FP8 GEMM saves (docs/PERFORMANCE.md, thirteenth GPU session).
Same arithmetic, same bits: the abs-max in fp32, scale = max(absmax, 1e-12) * fp32(1 / 448) (CUDA divides a tensor by a
scalar as a multiply by its reciprocal), x / scale with IEEE division (`div_rn`), the cast rounding to nearest even.
Imported only on CUDA."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

INV_FP8_MAX = tl.constexpr(1.0 / 448.0)  # 1 / torch.finfo(torch.float8_e4m3fn).max, as fp32; constexpr: the only
# globals a jit function may read


@triton.jit
def _quantize_rows_kernel(x_ptr, out_ptr, scale_ptr, K, stride_x, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row, out_row = x_ptr + row * stride_x, out_ptr + row * stride_out
    absmax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        absmax = tl.maximum(absmax, tl.abs(tl.load(x_row + cols, mask=cols < K, other=0.0).to(tl.float32)))
    scale = tl.maximum(tl.max(absmax, axis=0), 1e-12) * INV_FP8_MAX
    tl.store(scale_ptr + row, scale)
    for start in range(0, K, BLOCK):  # the row again: from L2 (a row is at most a few tens of KB)
        cols = start + tl.arange(0, BLOCK)
        x = tl.math.div_rn(tl.load(x_row + cols, mask=cols < K, other=0.0).to(tl.float32), scale)
        tl.store(out_row + cols, x.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=cols < K)


def quantize_rows(x: torch.Tensor, out_dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K), unit stride along K -> (x / scale as `out_dtype` (M, K), fp32 scale (M, 1)); one program per row.
    `out_dtype` float32 skips the cast (the interpreter test: its e4m3 conversion is not the GPU's)."""
    m, k = x.shape
    out = torch.empty((m, k), dtype=out_dtype, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return out, scale
    block = min(1024, triton.next_power_of_2(k))
    _quantize_rows_kernel[(m,)](x, out, scale, k, x.stride(0), out.stride(0), BLOCK=block, num_warps=4)
    return out, scale

"""Triton kernels over LLM.int8 weights (int8 rows `CB` (N, K) with per-row fp32 `scale` = SCB / 127): dequantize to
bf16, a weight-only W8A16 matmul for few rows that reads the int8 weights directly (decode steps), and one with the
weight as the tensor-core matmul's first operand for more rows (batched decode steps). Imported only on CUDA."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _dequantize_kernel(cb_ptr, scale_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rn[:, None] < N) & (rk[None, :] < K)
    offsets = rn[:, None].to(tl.int64) * K + rk[None, :]
    cb = tl.load(cb_ptr + offsets, mask=mask, other=0)
    scale = tl.load(scale_ptr + rn, mask=rn < N, other=0.0)
    # one fp32 product rounded once, as bitsandbytes' own dequantize-then-matmul path (MatMul8bitFp) computes it
    tl.store(out_ptr + offsets, (cb.to(tl.float32) * scale[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


def dequantize(cb: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """cb (N, K) int8, scale (N,) fp32 -> weight (N, K) `dtype`."""
    n, k = cb.shape
    out = torch.empty((n, k), dtype=dtype, device=cb.device)
    grid = (triton.cdiv(n, 32), triton.cdiv(k, 256))
    _dequantize_kernel[grid](cb, scale, out, n, k, BLOCK_N=32, BLOCK_K=256, num_warps=4)
    return out


@triton.autotune(
    configs=[
        triton.Config({"BLOCK_N": 16, "BLOCK_K": 256}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_N": 32, "BLOCK_K": 256}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_N": 32, "BLOCK_K": 128}, num_warps=4, num_stages=5),
        triton.Config({"BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
    ],
    key=["M", "N", "K"],
)
@triton.jit
def _w8a16_kernel(
    x_ptr, cb_ptr, scale_ptr, out_ptr, M, N, K, stride_xm, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk[None, :] < K
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=(rm[:, None] < M) & k_ok, other=0.0)
        w = tl.load(cb_ptr + rn[:, None].to(tl.int64) * K + kk[None, :], mask=(rn[:, None] < N) & k_ok, other=0)
        acc += tl.dot(x, tl.trans(w.to(x.dtype)))  # int8 -> bf16 is exact
    scale = tl.load(scale_ptr + rn, mask=rn < N, other=0.0)
    out = (acc * scale[None, :]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], out, mask=(rm[:, None] < M) & (rn[None, :] < N))


def w8a16_matmul(x: torch.Tensor, cb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (M, K) bf16/fp16, row-contiguous; cb (N, K) int8; scale (N,) fp32 -> x @ (cb * scale)^T (M, N) in x's dtype."""
    m, k = x.shape
    n = cb.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m = min(64, max(16, triton.next_power_of_2(m)))

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, block_m))

    _w8a16_kernel[grid](x, cb, scale, out, m, n, k, x.stride(0), out.stride(0), BLOCK_M=block_m)
    return out


@triton.autotune(
    configs=[
        triton.Config({"BLOCK_N": 64, "BLOCK_M": 128, "BLOCK_K": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 64, "BLOCK_K": 64}, num_warps=4, num_stages=5),
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 128, "BLOCK_K": 64}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_N": 256, "BLOCK_M": 64, "BLOCK_K": 64}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_N": 64, "BLOCK_M": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
    ],
    key=["M", "N", "K"],
)
@triton.jit
def _w8a16_weight_first_kernel(
    x_ptr, cb_ptr, scale_ptr, out_ptr, M, N, K, stride_xm, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # out^T = W x^T tile by tile: the int8 weight tile, converted in registers, is the first operand of the dot, which
    # Hopper's wgmma reads from registers (the second must come from shared memory); x^T is read K-major from x's rows.
    # The M blocks of one weight tile run next to each other (program_id(0) over M), so the weight comes from HBM once.
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        w = tl.load(
            cb_ptr + rn[:, None].to(tl.int64) * K + kk[None, :], mask=(rn[:, None] < N) & k_ok[None, :], other=0
        )
        xt = tl.load(x_ptr + rm[None, :] * stride_xm + kk[:, None], mask=(rm[None, :] < M) & k_ok[:, None], other=0.0)
        acc += tl.dot(w.to(xt.dtype), xt)  # int8 -> bf16 is exact
    scale = tl.load(scale_ptr + rn, mask=rn < N, other=0.0)
    out = tl.trans(acc * scale[:, None]).to(out_ptr.dtype.element_ty)  # (BLOCK_M, BLOCK_N)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], out, mask=(rm[:, None] < M) & (rn[None, :] < N))


def w8a16_weight_first_matmul(x: torch.Tensor, cb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`w8a16_matmul` for more rows (tens to a hundred and more): x (M, K) bf16/fp16, row-contiguous; cb (N, K) int8;
    scale (N,) fp32 -> x @ (cb * scale)^T (M, N) in x's dtype, the same arithmetic (fp32 sums, the row scale applied
    to each sum)."""
    m, k = x.shape
    n = cb.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))

    _w8a16_weight_first_kernel[grid](x, cb, scale, out, m, n, k, x.stride(0), out.stride(0))
    return out

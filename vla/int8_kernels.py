"""Triton kernels over LLM.int8 weights (int8 rows `CB` (N, K) with per-row fp32 `scale` = SCB / 127): dequantize to
bf16, and weight-only W8A16 matmuls for few rows that read the int8 weights directly: one tiled over N and M, and a
split-K one for decode steps (<= 16 rows) that keeps every SM streaming weights. Imported only on CUDA."""

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
        triton.Config({"BLOCK_K": 256}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_K": 512}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_K": 512}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_K": 1024}, num_warps=8, num_stages=3),
    ],
    key=["M", "N", "K", "SPLIT_K", "BLOCK_N"],
)
@triton.jit
def _gemv_kernel(
    x_ptr, cb_ptr, scale_ptr, out_ptr, M, N, K, stride_xm,
    SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Program (n, s, m): rows [m * BLOCK_M, +BLOCK_M) of x times weight rows [n * BLOCK_N, +BLOCK_N) over the s-th of
    SPLIT_K column ranges (each a whole number of BLOCK_K). SPLIT_K == 1 writes out = acc * scale in out's dtype;
    otherwise out is the fp32 (SPLIT_K, M, N) buffer of partial sums that `_split_sum_kernel` adds up. BLOCK_M == 1
    (one input row) multiplies elementwise and sums over K, so BLOCK_N can be small (more programs); else tl.dot."""
    pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    k_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_start = pid_k * k_split
    k_end = tl.minimum(K, k_start + k_split)
    # out-of-range weight rows read row N - 1 (never stored): the loads need no row mask and stay vectorized
    w_ptrs = cb_ptr + tl.minimum(rn, N - 1)[:, None].to(tl.int64) * K + rk[None, :]
    x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]
    if BLOCK_M == 1:
        acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            k_ok = (k0 + rk) < K
            x = tl.load(x_ptrs + k0, mask=(rm[:, None] < M) & k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs + k0, mask=k_ok[None, :], other=0)
            acc2 += w.to(tl.float32) * x.to(tl.float32)  # (1, BLOCK_K) broadcast over the BLOCK_N rows
        acc = tl.sum(acc2, axis=1)[None, :]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            k_ok = (k0 + rk) < K
            x = tl.load(x_ptrs + k0, mask=(rm[:, None] < M) & k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs + k0, mask=k_ok[None, :], other=0)
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))  # int8 -> bf16/fp16 is exact
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
    if SPLIT_K == 1:
        scale = tl.load(scale_ptr + rn, mask=rn < N, other=0.0)
        tl.store(out_ptr + offsets, (acc * scale[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + pid_k * M * N + offsets, acc, mask=mask)


@triton.jit
def _split_sum_kernel(part_ptr, scale_ptr, out_ptr, MN, N, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """out (M, N) = (sum of the SPLIT_K partial sums, in split order) * scale, cast once: deterministic, no atomics."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < MN
    acc = tl.load(part_ptr + offsets, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(part_ptr + s * MN + offsets, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + offsets % N, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, (acc * scale).to(out_ptr.dtype.element_ty), mask=mask)


_MIN_K_SPLIT = 512  # columns per split at least: shorter ranges spend more on the partial sums than they win
_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def gemv_plan(m: int, n: int, k: int, sm_count: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, SPLIT_K) for x (m, K) @ cb (n, K)^T: small tiles along N, then split K until there are
    about 4 programs per SM (HBM needs many loads in flight; a program streams one (BLOCK_N, K / SPLIT_K) slab)."""
    if m == 1:
        block_m, block_n = 1, 8
    else:  # tl.dot needs 16; wider N tiles re-read the input rows less often
        block_m, block_n = min(64, max(16, triton.next_power_of_2(m))), 16 if m <= 4 else 32
    programs = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    split_k = max(1, min(triton.cdiv(4 * sm_count, programs), k // _MIN_K_SPLIT, 16))
    return block_m, block_n, split_k


def w8a16_gemv(x: torch.Tensor, cb: torch.Tensor, scale: torch.Tensor, plan: tuple[int, int, int] | None = None,
               kernel=None, **meta) -> torch.Tensor:  # fmt: skip
    """`w8a16_matmul` for few rows (decode steps), split over K so that the GPU's SMs all stream weights: x (M, K)
    bf16/fp16, row-contiguous; cb (N, K) int8; scale (N,) fp32 -> (M, N) in x's dtype. Deterministic and CUDA-graph
    safe. `plan` (BLOCK_M, BLOCK_N, SPLIT_K) overrides `gemv_plan`; `kernel`/`meta` (the autotuned kernel's `.fn`
    and BLOCK_K) let the tests run it in Triton's interpreter."""
    m, k = x.shape
    n = cb.shape[0]
    block_m, block_n, split_k = plan or gemv_plan(m, n, k, _sm_count(x.device))
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    part = out if split_k == 1 else torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, block_n), split_k, triton.cdiv(m, block_m))
    (kernel or _gemv_kernel)[grid](x, cb, scale, part, m, n, k, x.stride(0),
                                   SPLIT_K=split_k, BLOCK_M=block_m, BLOCK_N=block_n, **meta)  # fmt: skip
    if split_k > 1:
        _split_sum_kernel[(triton.cdiv(m * n, 1024),)](part, scale, out, m * n, n, SPLIT_K=split_k, BLOCK=1024)
    return out

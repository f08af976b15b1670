"""q/k/v and gate/up of a Llama layer as one matmul each: their weights become consecutive row blocks (views) of one
buffer, same values and no extra memory (vla.fast_decode's fused projections)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def qkv_modules(layer: nn.Module) -> tuple[nn.Module, ...]:
    return layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj


def gate_up_modules(layer: nn.Module) -> tuple[nn.Module, ...]:
    return layer.mlp.gate_proj, layer.mlp.up_proj


def fuse(modules: Sequence[nn.Module]) -> torch.Tensor | None:
    """One (sum of N, K) weight holding the modules' weights as row blocks, each module's weight rebound to a view of
    its block (same values; the old storage is freed); None unless all are bias-free floating-point `nn.Linear`s
    of one dtype, device and input size (LoRA-wrapped or quantized layers keep their own matmuls)."""
    if not all(type(m) is nn.Linear and m.bias is None for m in modules):
        return None
    weights = [m.weight for m in modules]
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) > 1 or not weights[0].is_floating_point():
        return None
    fused = torch.cat([w.detach() for w in weights])
    start = 0
    for module in modules:
        rows = module.weight.shape[0]
        module.weight.data = fused[start : start + rows]
        start += rows
    return fused


def is_fused(fused: torch.Tensor, modules: Sequence[nn.Module]) -> bool:
    """Whether the modules are plain Linears whose weights are still the consecutive row blocks of `fused`."""
    if fused.dim() != 2 or not fused.is_contiguous():
        return False
    address, row_bytes, rows = fused.data_ptr(), fused.shape[1] * fused.element_size(), 0
    for module in modules:
        weight = module.weight if type(module) is nn.Linear else None
        if weight is None or weight.dtype != fused.dtype or weight.data_ptr() != address + rows * row_bytes:
            return False
        rows += weight.shape[0]
    return rows == fused.shape[0]

"""q/k/v and gate/up of a Llama layer as one matmul each: their weights become consecutive row blocks (views) of one
buffer, same values and no extra memory (vla.fast_decode's fused projections). Plain floating-point `nn.Linear`s fuse
their weights; weight-only int8 layers (`vla.int8_linear`) fuse their int8 rows and per-row scales, which are exact
to concatenate (each output row keeps its own scale)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vla import int8_linear


def qkv_modules(layer: nn.Module) -> tuple[nn.Module, ...]:
    return layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj


def gate_up_modules(layer: nn.Module) -> tuple[nn.Module, ...]:
    return layer.mlp.gate_proj, layer.mlp.up_proj


@dataclass(frozen=True)
class FusedInt8:
    """The int8 rows (sum of N, K) and per-row scales (sum of N,) of weight-only int8 layers."""

    cb: torch.Tensor
    scale: torch.Tensor


Fused = torch.Tensor | FusedInt8


def fuse(modules: Sequence[nn.Module]) -> Fused | None:
    """One (sum of N, K) weight holding the modules' weights as row blocks, each module's weight rebound to a view of
    its block (same values; the old storage is freed); None unless all are bias-free floating-point `nn.Linear`s, or
    all bias-free weight-only int8 layers, of one dtype, device and input size (LoRA-wrapped layers and other
    quantized layers keep their own matmuls)."""
    if all(int8_linear.is_weight_only(m) for m in modules):
        rows = [int8_linear.int8_rows(m) for m in modules]
        if len({(cb.device, cb.shape[1]) for cb, _ in rows}) > 1:
            return None
        fused = FusedInt8(torch.cat([cb for cb, _ in rows]), torch.cat([scale for _, scale in rows]))
        for module, cb, scale in zip(modules, *_blocks(fused, modules), strict=True):
            int8_linear.rebind_int8_rows(module, cb, scale)
        return fused
    if not all(type(m) is nn.Linear and m.bias is None for m in modules):
        return None
    weights = [m.weight for m in modules]
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) > 1 or not weights[0].is_floating_point():
        return None
    fused = torch.cat([w.detach() for w in weights])
    for module, block in zip(modules, _blocks(fused, modules)[0], strict=True):
        module.weight.data = block
    return fused


def is_fused(fused: Fused, modules: Sequence[nn.Module]) -> bool:
    """Whether the modules' weights (and int8 scales) are still the consecutive row blocks of `fused`."""
    if isinstance(fused, FusedInt8):
        if not all(int8_linear.is_weight_only(m) for m in modules):
            return False
        return _row_blocks(fused.cb, [m.weight.data for m in modules]) and _row_blocks(
            fused.scale, [int8_linear.int8_rows(m)[1] for m in modules]
        )
    return all(type(m) is nn.Linear for m in modules) and _row_blocks(fused, [m.weight for m in modules])


def unfuse(fused: Fused, modules: Sequence[nn.Module]) -> None:
    """Give each module's weight (and int8 scale) its own storage again, same values (e.g. before saving: safetensors
    refuses tensors that share memory). Nothing to do unless they are still `fused`'s blocks."""
    if not is_fused(fused, modules):
        return
    for module in modules:
        if isinstance(fused, FusedInt8):
            cb, scale = int8_linear.int8_rows(module)
            int8_linear.rebind_int8_rows(module, cb.clone(), scale.clone())
        else:
            module.weight.data = module.weight.data.clone()


def linear(x: torch.Tensor, fused: Fused) -> torch.Tensor:
    """x (..., K) through the fused weight -> (..., sum of N), as the modules compute it one by one."""
    if isinstance(fused, FusedInt8):
        return int8_linear.fused_int8_linear(x, fused.cb, fused.scale)
    return F.linear(x, fused)


def _blocks(fused: Fused, modules: Sequence[nn.Module]) -> list[list[torch.Tensor]]:
    """The modules' row blocks of each of `fused`'s tensors (the weight; for int8 also the scale)."""
    tensors = (fused.cb, fused.scale) if isinstance(fused, FusedInt8) else (fused,)
    sizes = [m.weight.shape[0] for m in modules]
    return [list(t.split(sizes)) for t in tensors]


def _row_blocks(fused: torch.Tensor, parts: Sequence[torch.Tensor]) -> bool:
    """Whether `parts` are `fused`'s consecutive row blocks (same dtype, in order, covering it)."""
    if not fused.is_contiguous():
        return False
    address, row_bytes, rows = fused.data_ptr(), fused[0].numel() * fused.element_size(), 0
    for part in parts:
        if part.dtype != fused.dtype or part.data_ptr() != address + rows * row_bytes:
            return False
        rows += part.shape[0]
    return rows == fused.shape[0]

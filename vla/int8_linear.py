"""Weight-only int8 matmuls for bitsandbytes LLM.int8 layers: the same stored int8 weights (CB, SCB), dequantized on
the fly and multiplied in bf16 instead of quantizing the activations too. Fast on GPU (no outlier search, no host
syncs, CUDA-graph safe), differentiable in the input for LoRA training; the model's weights stay untouched."""

from __future__ import annotations

import torch
from torch import nn

from vla.forward_patch import patch_forward, unpatch_forward

GEMV_MAX_ROWS = 64  # up to this many input rows the GEMV kernel reads the int8 weights directly (decode steps)
WEIGHT_FIRST_MAX_ROWS = 192  # up to this many the weight-first tensor-core kernel does (batched decode steps: 1.1-2.6x
# dequantize + cuBLAS at 96-192 rows on every shape, H100); more rows dequantize the weight into a bf16 temporary and use
# cuBLAS (prefill, training), where cuBLAS's efficiency outweighs the extra bytes (the kernel: 0.74-1.11x at 296 rows)
_INV_127 = 1.0 / 127.0  # LLM.int8 stores each weight row as round(127 * w / absmax(row)), SCB = absmax(row)
_PATCH = "_vla_int8_weight_only"  # attribute marking a patched layer (holds its per-row scale)


def int8_weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 rows (N, K) and per-row fp32 scale (N,) = SCB / 127 of a bitsandbytes `Linear8bitLt` (frozen)."""
    if layer.weight.CB is not None:  # before bitsandbytes' first forward the statistics sit on the weight
        layer.init_8bit_state()
    cb, scb = layer.weight.data, layer.state.SCB
    if cb.dtype != torch.int8 or scb is None:
        raise ValueError(
            f"{type(layer).__name__} holds {cb.dtype} weights without LLM.int8 statistics; weight-only int8 needs a "
            "layer quantized with has_fp16_weights=False (load the model with quantization='8bit')"
        )
    return cb, scb.float() * _INV_127


def dequantize(cb: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """cb (N, K) int8, scale (N,) fp32 -> (N, K) `dtype`: round(cb * scale), one rounding (bitsandbytes' MatMul8bitFp
    dequantizes the same way)."""
    if cb.is_cuda and dtype in (torch.bfloat16, torch.float16):
        from vla.int8_kernels import dequantize as triton_dequantize

        return triton_dequantize(cb, scale, dtype)
    return (cb.float() * scale[:, None]).to(dtype)


def _matmul(x: torch.Tensor, cb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (M, K) -> (M, N) in x's dtype."""
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        from vla import int8_kernels

        if x.shape[0] <= GEMV_MAX_ROWS:
            return int8_kernels.w8a16_matmul(x.contiguous(), cb, scale)
        if x.shape[0] <= WEIGHT_FIRST_MAX_ROWS:
            return int8_kernels.w8a16_weight_first_matmul(x.contiguous(), cb, scale)
    return x @ dequantize(cb, scale, x.dtype).t()


class _Int8WeightOnly(torch.autograd.Function):
    """y = x @ W^T + b with W = dequantize(cb, scale); gradient for x only (the weights are frozen)."""

    @staticmethod
    def forward(ctx, x, cb, scale, bias):
        dtype = torch.get_autocast_dtype("cuda") if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype
        ctx.save_for_backward(cb, scale)
        ctx.x_dtype = x.dtype
        out = _matmul(x.reshape(-1, x.shape[-1]).to(dtype), cb, scale)
        out = out.reshape(*x.shape[:-1], cb.shape[0])
        return out if bias is None else out + bias.to(out.dtype)

    @staticmethod
    def backward(ctx, grad):
        cb, scale = ctx.saved_tensors
        grad_x = grad @ dequantize(cb, scale, grad.dtype)
        return grad_x.to(ctx.x_dtype), None, None, None


def int8_weight_only_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward of a patched `Linear8bitLt`: x (..., K) -> (..., N). Under CUDA autocast the matmul runs in the
    autocast dtype, otherwise in x's dtype."""
    return _Int8WeightOnly.apply(x, layer.weight.data, getattr(layer, _PATCH), layer.bias)


def enable_int8_weight_only(model: nn.Module) -> int:
    """Route every bitsandbytes `Linear8bitLt` in `model` through `int8_weight_only_linear` (`vla.forward_patch`:
    names, state dicts and isinstance checks stay as they are). Returns the number of layers patched."""
    layers = _int8_layers(model)
    for layer in layers:
        if getattr(layer, _PATCH, None) is None:
            _, scale = int8_weights(layer)
            setattr(layer, _PATCH, scale)
            patch_forward(layer, int8_weight_only_linear)
    return len(layers)


def disable_int8_weight_only(model: nn.Module) -> int:
    """Undo `enable_int8_weight_only` (back to bitsandbytes' LLM.int8 matmul). Returns the number of layers restored."""
    restored = 0
    for layer in _int8_layers(model):
        if getattr(layer, _PATCH, None) is not None:
            unpatch_forward(layer)
            setattr(layer, _PATCH, None)
            restored += 1
    return restored


def is_weight_only(layer: nn.Module) -> bool:
    """Whether `layer` is a bias-free `Linear8bitLt` routed through `int8_weight_only_linear`."""
    return getattr(layer, _PATCH, None) is not None and layer.bias is None


def int8_rows(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight-only layer's int8 rows (N, K) and scale (N,): what its forward multiplies by."""
    return layer.weight.data, getattr(layer, _PATCH)


def rebind_int8_rows(layer: nn.Module, cb: torch.Tensor, scale: torch.Tensor) -> None:
    """Make a weight-only layer's weight (and bitsandbytes' copy of it, `state.CB`, the same tensor) `cb` and its
    scale `scale`: same values, e.g. views into a fused buffer or clones of such views."""
    layer.weight.data = cb
    if layer.state.CB is not None:
        layer.state.CB = cb
    setattr(layer, _PATCH, scale)


def fused_int8_linear(x: torch.Tensor, cb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ (cb * scale)^T, no bias: what a weight-only layer computes, over several layers' rows at once."""
    return _Int8WeightOnly.apply(x, cb, scale, None)


def _int8_layers(model: nn.Module) -> list[nn.Module]:
    if not any(type(m).__module__.startswith("bitsandbytes") for m in model.modules()):
        return []  # no quantized layer: spare the bitsandbytes import
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]

"""FP8 (e4m3) weights for the frozen Llama linears: `quantization="fp8"`. Each weight row is stored as e4m3 with one
fp32 scale (absmax / 448); each call quantizes its input rows the same way and multiplies on the FP8 tensor cores
(`torch._scaled_mm`, row-wise scales; Ada / Hopper, compute capability >= 8.9), accumulating in fp32. Half the bytes
of bf16 and twice its matmul peak: the lever for the prefill-bound batched decoding and the frozen base of LoRA
training (docs/PERFORMANCE.md, "Ceilings from the shapes"). The gradient for the input uses the dequantized weights
in the input's dtype. An e4m3 element keeps 3 mantissa bits: at the 7B's shapes with gaussian operands a matmul's
output differs from the fp32 product by 3.7 % (relative norm), where bf16 operands give 0.23 % (CPU, 2026-12-05).

The weight is held as a uint8 view of the e4m3 bytes, so `Module.to(dtype)`, peft (adapters keep their own dtype)
and the fused q/k/v projections (floating-point weights only) leave it alone; the layer stays an `nn.Linear` with its
own name. Checkpoints save the unquantized weights from the files they were loaded from (vla.checkpoint)."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from vla.forward_patch import patch_forward

logger = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
_PATCH = "_vla_fp8_scale"  # attribute marking a converted layer (holds its per-row fp32 scale)
_LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_fp8_device(device: torch.device) -> None:
    """Raise one clear error where FP8 matmuls cannot run (a CUDA card older than Ada / Hopper)."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"quantization 'fp8' needs FP8 tensor cores (compute capability >= 8.9: L4, L40, H100, H200); "
                         f"{name} has {torch.cuda.get_device_capability(device)}: use quantization 8bit or 4bit")  # fmt: skip


def quantize_rows(x: torch.Tensor, fused: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (e4m3 (M, K), fp32 scale (M, 1)) with x ≈ e4m3 * scale, each row's absmax mapped to 448. On CUDA
    (`fused` None) one Triton kernel (`vla.fp8_kernels`; where it fails, torch from then on, with one warning); else
    five torch kernels (one fused abs-max, two on the (M, 1) scale, a divide in fp32 and the cast) with the same
    bits: in a decode step this runs for every projection, so each kernel counts."""
    x = x.detach()
    if fused or (fused is None and _fused_by_default(x)):
        try:
            from vla.fp8_kernels import quantize_rows as fused_quantize_rows

            return fused_quantize_rows(x if x.stride(-1) == 1 else x.contiguous())
        except Exception as err:  # e.g. a Triton build that cannot compile it: the torch kernels give the same bits
            if fused:
                raise
            _FUSED_FAILURES.append(f"{type(err).__name__}: {err}")
            logger.warning("the fused FP8 quantization kernel failed (%s); quantizing with torch from now on, same "
                           "bits, slower", _FUSED_FAILURES[0])  # fmt: skip
    absmax = torch.linalg.vector_norm(x, ord=math.inf, dim=-1, keepdim=True, dtype=torch.float32)
    scale = absmax.clamp_(min=1e-12).mul_(1.0 / FP8_MAX)  # what CUDA's division by a scalar computes (on every device)
    return torch.div(x, scale).to(FP8), scale  # bf16 / fp32 computes in fp32


_FUSED_FAILURES: list[str] = []  # why the fused kernel failed in this process (then it is not tried again)


def _fused_by_default(x: torch.Tensor) -> bool:
    return x.is_cuda and not _FUSED_FAILURES


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A converted layer's weight (uint8 view of e4m3, (N, K)) and scale (N, 1) -> (N, K) `dtype`."""
    return (weight.view(FP8).float() * scale).to(dtype)


def fp8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype,
               fused_quantize: bool | None = None) -> torch.Tensor:  # fmt: skip
    """x (M, K) @ W^T -> (M, N) `out_dtype`, with the input rows quantized to e4m3 (`quantize_rows`, `fused_quantize`
    its `fused`) and the products summed in fp32."""
    n, k = weight.shape
    x_fp8, x_scale = quantize_rows(x, fused_quantize)
    if k % 16 == 0 and n % 16 == 0:  # the FP8 GEMM's shape constraint
        mm_dtype = torch.bfloat16 if x.is_cuda else torch.float32  # CUDA's row-wise scaling writes bf16 only
        out = torch._scaled_mm(x_fp8, weight.view(FP8).t(), scale_a=x_scale, scale_b=scale.t(), out_dtype=mm_dtype)
    else:  # tiny test shapes: the same values, multiplied in fp32
        out = (x_fp8.float() * x_scale) @ dequantize(weight, scale, torch.float32).t()
    return out.to(out_dtype)


class _Fp8Linear(torch.autograd.Function):
    """y = x @ W^T + b in FP8; gradient for x only (the weights are frozen)."""

    @staticmethod
    def forward(ctx, x, weight, scale, bias):
        autocast = x.is_cuda and torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda") if autocast else x.dtype
        ctx.save_for_backward(weight, scale)
        ctx.x_dtype = x.dtype
        out = fp8_matmul(x.reshape(-1, x.shape[-1]), weight, scale, dtype)
        out = out.reshape(*x.shape[:-1], weight.shape[0])
        return out if bias is None else out + bias.to(out.dtype)

    @staticmethod
    def backward(ctx, grad):
        weight, scale = ctx.saved_tensors
        return (grad @ dequantize(weight, scale, grad.dtype)).to(ctx.x_dtype), None, None, None


def fp8_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The forward of a converted layer: x (..., K) -> (..., N), in the CUDA autocast dtype when autocast is on."""
    return _Fp8Linear.apply(x, layer.weight, getattr(layer, _PATCH), layer.bias)


def is_fp8(layer: nn.Module) -> bool:
    return getattr(layer, _PATCH, None) is not None


def enable_fp8(language_model: nn.Module) -> int:
    """Convert the q/k/v/o and gate/up/down projections of every Llama decoder layer to FP8 weights, in place (the
    embeddings and lm_head keep their dtype, as bitsandbytes' quantization does). Returns the layers converted."""
    converted = 0
    for name, layer in language_model.named_modules():
        if type(layer) is not nn.Linear or name.rpartition(".")[2] not in _LLAMA_PROJECTIONS or is_fp8(layer):
            continue
        if layer.weight.device.type == "meta":
            raise ValueError("quantization 'fp8' needs real weights; build on 'cpu' or 'cuda', not 'meta'")
        weight, scale = quantize_rows(layer.weight.data)
        layer.weight = nn.Parameter(weight.view(torch.uint8), requires_grad=False)
        setattr(layer, _PATCH, scale)
        patch_forward(layer, fp8_linear)  # by class: compiled decoder layers share one graph (vla.forward_patch)
        converted += 1
    return converted

"""Fine-tuning speed and memory switches that keep the model the same model: selective activation checkpointing of
the Llama layers, checkpointing of the vision-tower blocks, bf16 LoRA inputs under autocast, and weight-only int8
matmuls for LLM.int8 layers (`vla.int8_linear`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from vla.forward_patch import original_forward, patch_forward, unpatch_forward

logger = logging.getLogger(__name__)


@dataclass
class SpeedConfig:
    """Fine-tuning section `speed`: switches that trade compute for memory or run the same math faster. None changes
    the stored weights or the loss beyond last-bit rounding (docs/PERFORMANCE.md measures each)."""

    activation_checkpointing: bool = False  # recompute Llama layer activations in backward: less memory, slower
    checkpoint_llm_layers: int | None = None  # with activation_checkpointing: recompute only the first N layers
    checkpoint_vision: bool = False  # recompute the vision towers' blocks in backward (~0.5 GiB less per sample)
    lora_bf16_inputs: bool = False  # skip peft's float32 copy of each adapter input (CUDA autocast only; same result)
    lora_fused: bool = False  # LoRA scale on the rank-r side and the add fused into the matmul (last-bit rounding)
    int8_weight_only: bool = False  # 8bit only: bf16 matmuls over the int8 weights instead of LLM.int8's (faster)
    expandable_segments: bool = False  # CUDA allocator grows memory segments in place: lower peak reserved memory
    compile_llm_layers: bool = False  # torch.compile each Llama decoder layer (regional compilation): its RMSNorm,
    # rope, SwiGLU and residual chain fused into few kernels; compiles once at the first step (last-bit rounding)
    compile_vision: bool = False  # torch.compile each vision-tower block (regional): for small models, whose steps are
    # bound by kernel launches (the learning proof's `small` preset), the blocks' elementwise ops fused (last-bit rounding)
    prefetch_batches: int = 0  # batches a background thread makes ahead while the model steps (vla.prefetch; the
    # same batches in the same order, exact resume); 0: made between the steps
    fused_optimizer: bool = False  # AdamW's fused implementation (vla.optim.make_optimizer): one kernel per device
    # and dtype for the whole update instead of a kernel per operation (last-bit rounding)

    def check(self, quantization: str | None) -> None:
        if self.prefetch_batches < 0:
            raise ValueError(f"speed.prefetch_batches must be >= 0, got {self.prefetch_batches}")
        if self.int8_weight_only and quantization != "8bit":
            raise ValueError("speed.int8_weight_only computes with 8-bit weights: set model.quantization 8bit or "
                             "speed.int8_weight_only false")  # fmt: skip

    def apply(self, model: nn.Module, device: torch.device) -> list[str]:
        """Turn the switches on for `model` (after it is built, before the optimizer sees it)."""
        llm_layers = None  # leave the Llama layers as they are
        if self.activation_checkpointing:
            llm_layers = self.checkpoint_llm_layers
            if llm_layers is None:
                llm_layers = len(model.language_model.model.layers)
        return apply_training_speedups(
            model, checkpoint_llm_layers=llm_layers, checkpoint_vision=self.checkpoint_vision,
            lora_bf16_inputs=self.lora_bf16_inputs and device.type == "cuda", lora_fused=self.lora_fused,
            int8_weight_only=self.int8_weight_only, expandable_segments=self.expandable_segments,
            compile_llm_layers=self.compile_llm_layers, compile_vision=self.compile_vision,
        )  # fmt: skip


def checkpoint_llm(model: nn.Module, layers: int) -> int:
    """Non-reentrant activation checkpointing on the first `layers` Llama decoder layers only (0 = none): the others
    keep their activations and skip the recompute. Returns the number of layers checkpointed."""
    llm, decoder = model.language_model, model.language_model.model.layers
    if not 0 <= layers <= len(decoder):
        raise ValueError(f"checkpoint_llm_layers must be in [0, {len(decoder)}], got {layers}")
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.24 renamed it
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for index, layer in enumerate(decoder):
        layer.gradient_checkpointing = index < layers
    return min(layers, len(decoder))


def compile_layers(model: nn.Module) -> int:
    """Regional compilation: `torch.compile` each Llama decoder layer in place (`nn.Module.compile`: names and state
    dicts unchanged). The layers share their code, so one compilation serves all of them; activation checkpointing
    recomputes through the compiled layer. Returns the number of layers compiled."""
    layers = model.language_model.model.layers
    for layer in layers:
        layer.compile()
    return len(layers)


def compile_tower_blocks(model: nn.Module) -> int:
    """Regional compilation of both vision towers: `torch.compile` each timm block in place (names and state dicts
    unchanged; checkpointed blocks recompute through it). One graph per tower width. Returns the blocks compiled."""
    blocks = [block for tower in _towers(model) for block in tower.blocks]
    for block in blocks:
        block.compile()
    return len(blocks)


def _towers(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    return model.vision_backbone.featurizer, model.vision_backbone.fused_featurizer


def checkpoint_towers(model: nn.Module, enable: bool = True) -> None:
    """Recompute the vision towers' blocks in backward (timm's non-reentrant checkpointing): their activations
    (~0.5 GiB per sample at full size) are not kept."""
    for tower in _towers(model):
        tower.set_grad_checkpointing(enable)


def bf16_lora_inputs(model: nn.Module, enable: bool = True) -> int:
    """Stop peft from casting each adapter's input to the adapters' float32 before `lora_A`. Under CUDA autocast the
    matmul casts it back to bf16, so the result is bit-identical, minus an fp32 copy of every adapted input (memory
    and bandwidth). Only for autocast training: without autocast a bf16 input would meet float32 adapter weights.
    Returns the number of LoRA layers changed."""
    from vla.lora import lora_layers

    layers = lora_layers(model)
    for layer in layers.values():
        layer.cast_input_dtype_enabled = not enable
    return len(layers)


def fuse_lora(model: nn.Module, enable: bool = True) -> int:
    """Under CUDA/CPU autocast, compute each LoRA Linear as `addmm(base(x), scale * lora_A(x), lora_B^T)`: the scale
    lands on the rank-r intermediate and the add in the matmul's epilogue, sparing two passes (and their backward)
    over every (tokens, out_features) output. Same math; bf16 rounding differs in the last bit (one rounding of the
    sum instead of two). Includes `bf16_lora_inputs`. Outside autocast the layers run peft's own forward. Returns
    the number of layers changed."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for layer in model.modules():
        if not (isinstance(layer, LoraLayer) and isinstance(layer.get_base_layer(), nn.Linear)):
            continue
        if enable:
            patch_forward(layer, _fused_lora_forward)
        else:
            unpatch_forward(layer)
        count += 1
    return count


def _fused_lora_forward(layer: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if not torch.is_autocast_enabled(x.device.type) or layer.disable_adapters or layer.merged or args or kwargs:
        return original_forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x)
    for name in layer.active_adapters:
        if name not in layer.lora_A or name in layer.lora_variant:
            continue
        low_rank = layer.lora_A[name](layer.lora_dropout[name](x)) * layer.scaling[name]  # (..., r)
        flat = torch.addmm(result.reshape(-1, result.shape[-1]), low_rank.reshape(-1, low_rank.shape[-1]),
                           layer.lora_B[name].weight.t())  # fmt: skip
        result = flat.view(result.shape)
    return result


def apply_training_speedups(
    model: nn.Module,
    *,
    checkpoint_llm_layers: int | None = None,
    checkpoint_vision: bool = False,
    lora_bf16_inputs: bool = False,
    lora_fused: bool = False,
    int8_weight_only: bool = False,
    expandable_segments: bool = False,
    compile_llm_layers: bool = False,
    compile_vision: bool = False,
) -> list[str]:
    """Apply the switches of `SpeedConfig`, after the model is built. checkpoint_llm_layers: None =
    leave Llama checkpointing as it is, N = checkpoint exactly the first N layers. Returns a description of each
    change, for the log."""
    applied = []
    if checkpoint_llm_layers is not None:
        count = checkpoint_llm(model, checkpoint_llm_layers)
        applied.append(f"activation checkpointing on {count} of {len(model.language_model.model.layers)} Llama layers")
    if checkpoint_vision:
        checkpoint_towers(model)
        applied.append("activation checkpointing on the vision-tower blocks")
    if lora_bf16_inputs:
        applied.append(f"bf16 inputs for {bf16_lora_inputs(model)} LoRA layers")
    if lora_fused:
        applied.append(f"fused scale + add of {fuse_lora(model)} LoRA Linear layers")
    if int8_weight_only:
        from vla.int8_linear import enable_int8_weight_only

        count = enable_int8_weight_only(model.language_model)
        if count == 0:
            raise ValueError("int8_weight_only needs the LLM quantized with LLM.int8: set quantization '8bit'")
        applied.append(f"weight-only int8 matmuls in {count} LLM.int8 layers")
    if expandable_segments and torch.cuda.is_available():
        # grow CUDA memory segments in place instead of caching odd-sized blocks: less reserved-but-unused memory
        # between micro-batches (same as PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, from now on)
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
        applied.append("expandable CUDA memory segments")
    if compile_llm_layers:  # last: the compiled code traces the layers as the switches above left them
        applied.append(f"torch.compile of {compile_layers(model)} Llama decoder layers")
    if compile_vision:
        applied.append(f"torch.compile of {compile_tower_blocks(model)} vision-tower blocks")
    for line in applied:
        logger.info("speed-up: %s", line)
    return applied

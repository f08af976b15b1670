"""Fine-tuning speed and memory switches that keep the model the same model: selective activation checkpointing of
the Llama layers, checkpointing of the vision-tower blocks, bf16 LoRA inputs under autocast, and weight-only int8
matmuls for LLM.int8 layers (`vla.int8_linear`)."""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def limit_checkpointed_layers(model: nn.Module, layers: int) -> int:
    """Keep activation checkpointing (already enabled on the Llama) on the first `layers` decoder layers only: the
    others keep their activations and skip the recompute. Returns the number of layers still checkpointed."""
    decoder = model.language_model.model.layers
    if not 0 <= layers <= len(decoder):
        raise ValueError(f"checkpoint_llm_layers must be in [0, {len(decoder)}], got {layers}")
    for index, layer in enumerate(decoder):
        layer.gradient_checkpointing = layer.gradient_checkpointing and index < layers
    return sum(bool(layer.gradient_checkpointing) for layer in decoder)


def checkpoint_towers(model: nn.Module, enable: bool = True) -> None:
    """Recompute the vision towers' blocks in backward (timm's non-reentrant checkpointing): their activations
    (~0.5 GiB per sample at full size) are not kept."""
    for tower in (model.vision_backbone.featurizer, model.vision_backbone.fused_featurizer):
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


def apply_training_speedups(
    model: nn.Module,
    *,
    checkpoint_llm_layers: int | None = None,
    checkpoint_vision: bool = False,
    lora_bf16_inputs: bool = False,
    int8_weight_only: bool = False,
    expandable_segments: bool = False,
) -> list[str]:
    """Apply the switches `vla.training.TrainConfig` exposes (after the model is built and Llama checkpointing, if
    any, enabled). checkpoint_llm_layers: None = leave as is, N = only the first N layers recompute. Returns a
    description of each change, for the log."""
    applied = []
    if checkpoint_llm_layers is not None:
        kept = limit_checkpointed_layers(model, checkpoint_llm_layers)
        applied.append(f"activation checkpointing on {kept} Llama layers")
    if checkpoint_vision:
        checkpoint_towers(model)
        applied.append("activation checkpointing on the vision-tower blocks")
    if lora_bf16_inputs:
        applied.append(f"bf16 inputs for {bf16_lora_inputs(model)} LoRA layers")
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
    for line in applied:
        logger.info("speed-up: %s", line)
    return applied

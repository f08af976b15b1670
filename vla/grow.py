"""Deeper copies of a trained VLA that compute exactly what it computes (LLaMA Pro's block expansion): each added
Llama layer or ViT block is a copy of the one before it with its output projections zeroed, so it adds nothing to
the residual stream until training moves those projections. Continuing a trained model with more capacity is then
possible without starting from random weights:

    python scripts/grow_checkpoint.py --checkpoint checkpoints/small-libero-spatial --out /tmp/grown \
        --add_llm_layers 4

Where the copies go: spread evenly over the original layers (4 layers + 4: a copy after each). In a vision tower only
the blocks up to the second-to-last feed the projector (`vla.vision.penultimate_features`), so the copies go among
those and the last block stays last (unused, as before).
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch

from vla.checkpoint import CheckpointParts

LLM_PREFIX = "language_model.model.layers"
TOWER_PREFIXES = ("vision_backbone.featurizer.blocks", "vision_backbone.fused_featurizer.blocks")
# the projections that write into the residual stream: zeroed, they make a layer the identity
LLM_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
TOWER_OUTPUTS = ("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias")


def expansion(layers: int, added: int, used: int | None = None) -> list[tuple[int, bool]]:
    """The grown stack as (source layer, is_copy) per new index: `added` copies spread evenly after the first `used`
    layers (default all), each copy right after the layer it copies; layers past `used` keep their order at the end."""
    used = layers if used is None else used
    if added < 0 or not 1 <= used <= layers:
        raise ValueError(f"cannot add {added} layers among the first {used} of {layers}")
    after = [0] * used
    for j in range(added):
        after[math.ceil((j + 1) * used / added) - 1] += 1
    plan = []
    for i in range(layers):
        plan.append((i, False))
        plan.extend([(i, True)] * (after[i] if i < used else 0))
    return plan


def _grow_stack(
    weights: dict[str, torch.Tensor], prefix: str, added: int, outputs: tuple[str, ...], last_unused: bool = False
) -> tuple[dict[str, torch.Tensor], int]:
    """`weights` with `added` identity copies among the layers under `prefix` (`expansion`; with `last_unused` the
    last layer stays last) and the copies' `outputs` zeroed: (a new dict, the new depth)."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$")
    layers: dict[int, dict[str, torch.Tensor]] = {}
    grown = {}
    for key, value in weights.items():
        match = pattern.match(key)
        if match:
            layers.setdefault(int(match[1]), {})[match[2]] = value
        else:
            grown[key] = value
    depth = len(layers)
    if sorted(layers) != list(range(depth)):
        raise ValueError(f"{prefix}: found layers {sorted(layers)}, expected 0..{depth - 1}")
    if last_unused and depth < 2:
        raise ValueError(f"{prefix} has {depth} blocks; growing needs the second-to-last block's features")
    plan = expansion(depth, added, used=depth - 1 if last_unused else depth)
    for index, (source, is_copy) in enumerate(plan):
        for name, value in layers[source].items():
            if is_copy and name in outputs:
                value = torch.zeros_like(value)
            elif is_copy:
                value = value.clone()
            grown[f"{prefix}.{index}.{name}"] = value
    return grown, len(plan)


def grow(parts: CheckpointParts, add_llm_layers: int = 0, add_tower_blocks: int = 0) -> CheckpointParts:
    """`parts` (vla.checkpoint.read_official_checkpoint) with `add_llm_layers` more Llama layers and
    `add_tower_blocks` more blocks in each vision tower, as identity copies (module docstring). The rest — tokenizer,
    image processor, action statistics — is the input's; the weight sources are dropped (the layer numbers moved)."""
    if add_llm_layers < 0 or add_tower_blocks < 0:
        raise ValueError(f"add_llm_layers and add_tower_blocks must be >= 0, got {add_llm_layers}, {add_tower_blocks}")
    config, weights = parts.config, dict(parts.state_dict)
    if add_llm_layers:
        weights, depth = _grow_stack(weights, LLM_PREFIX, add_llm_layers, LLM_OUTPUTS)
        config = dataclasses.replace(config, num_hidden_layers=depth)
    if add_tower_blocks:
        overrides = []
        for prefix, override in zip(TOWER_PREFIXES, config.vision.overrides, strict=True):
            weights, depth = _grow_stack(weights, prefix, add_tower_blocks, TOWER_OUTPUTS, last_unused=True)
            overrides.append({**override, "depth": depth})
        config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, overrides=tuple(overrides)))
    return dataclasses.replace(parts, config=config, state_dict=weights, weight_sources={})

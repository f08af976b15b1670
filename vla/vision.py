"""The fused DinoV2 + SigLIP vision backbone: two timm ViTs, second-to-last block features, concatenated per patch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

DINO_TIMM_ID = "vit_large_patch14_reg4_dinov2.lvd142m"
SIGLIP_TIMM_ID = "vit_so400m_patch14_siglip_224"


@dataclass
class VisionConfig:
    """The two towers, DINOv2 first (channels 0-2 of `pixel_values`, first 1024 features), SigLIP second."""

    timm_ids: tuple[str, str] = (DINO_TIMM_ID, SIGLIP_TIMM_ID)  # timm model names, as in the official config.json
    image_size: int = 224  # px, square input of both towers (patch 14 -> 16 x 16 = 256 patch tokens)
    overrides: tuple[dict[str, Any], dict[str, Any]] = field(default_factory=lambda: ({}, {}))  # extra
    # timm.create_model kwargs per tower (depth, embed_dim, num_heads) for tiny towers of the same classes

    def __post_init__(self) -> None:
        self.timm_ids = tuple(self.timm_ids)
        self.overrides = tuple(dict(o) for o in self.overrides)
        if len(self.timm_ids) != 2 or len(self.overrides) != 2:
            raise ValueError(f"need exactly two towers (DINOv2, SigLIP), got timm_ids={self.timm_ids}")


def create_tower(timm_id: str, image_size: int, overrides: dict[str, Any], pretrained: bool = False) -> nn.Module:
    """One timm ViT without classifier head, at `image_size` px (timm resamples DINOv2's 518-px pos_embed)."""
    import timm

    return timm.create_model(timm_id, pretrained=pretrained, num_classes=0, img_size=image_size, **overrides)


def penultimate_features(tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """images (B, 3, S, S) -> patch features (B, N, D) of the second-to-last block, without the final norm and
    without prefix (class/register) tokens. Blocks after it are not run (`stop_early`)."""
    index = len(tower.blocks) - 2
    (features,) = tower.forward_intermediates(
        images, indices=[index], norm=False, stop_early=True, output_fmt="NLC", intermediates_only=True
    )
    return features


class FusedVisionBackbone(nn.Module):
    """`featurizer` (DINOv2) and `fused_featurizer` (SigLIP): the official module names, so checkpoint keys and LoRA
    target names line up. Forward: pixel_values (B, 6, S, S) -> (B, 256, 1024 + 1152) for the full towers.

    The last block of each tower, both final `norm`s and SigLIP's `attn_pool` head are kept as modules but never
    run (see `unused_module_names`): official checkpoints hold them, a re-save must write them back, and the
    official LoRA recipe puts adapters on their Linears (they count towards the 110,828,288 trainable parameters
    but never receive a gradient).
    """

    def __init__(self, config: VisionConfig, pretrained: bool = False) -> None:
        super().__init__()
        self.config = config
        dino_id, siglip_id = config.timm_ids
        self.featurizer = create_tower(dino_id, config.image_size, config.overrides[0], pretrained)
        self.fused_featurizer = create_tower(siglip_id, config.image_size, config.overrides[1], pretrained)
        counts = {self.featurizer.patch_embed.num_patches, self.fused_featurizer.patch_embed.num_patches}
        if len(counts) != 1:
            raise ValueError(f"the two towers yield different patch counts {sorted(counts)}; use the same patch size")

    @property
    def feature_dim(self) -> int:
        """Per-patch feature size of the concatenation (2176 for the full towers)."""
        return self.featurizer.embed_dim + self.fused_featurizer.embed_dim

    @property
    def num_patches(self) -> int:
        return self.featurizer.patch_embed.num_patches

    def unused_module_names(self) -> list[str]:
        """Names (relative to this module) of the submodules that hold weights but are never run."""
        names = []
        for prefix, tower in (("featurizer", self.featurizer), ("fused_featurizer", self.fused_featurizer)):
            names.append(f"{prefix}.blocks.{len(tower.blocks) - 1}")
            for head in ("norm", "fc_norm", "attn_pool", "head"):
                module = getattr(tower, head, None)
                if module is not None and any(True for _ in module.parameters()):
                    names.append(f"{prefix}.{head}")
        return names

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 6, S, S) -> (B, N, D_dino + D_siglip)."""
        dino_pixels, siglip_pixels = pixel_values.split(3, dim=1)  # (B, 3, S, S) each
        dino = penultimate_features(self.featurizer, dino_pixels)  # (B, 256, 1024)
        siglip = penultimate_features(self.fused_featurizer, siglip_pixels)  # (B, 256, 1152)
        return torch.cat([dino, siglip], dim=-1)  # (B, 256, 2176)

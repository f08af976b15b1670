"""Image preprocessing for the fused DinoV2 + SigLIP towers: `pixel_values (B, 6, 224, 224)`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

# ImageNet statistics as official OpenVLA checkpoints actually apply them: rounded to bf16 by the conversion script
# and serialized in preprocessor_config.json's `tvf_normalize_params`.
DINO_MEAN = (0.484375, 0.455078125, 0.40625)
DINO_STD = (0.228515625, 0.2236328125, 0.224609375)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

ImageLike = Image.Image | np.ndarray


class ImageProcessor:
    """Squash-resize to `image_size` (bicubic, antialias: "resize-naive"), scale to [0, 1], normalize once per tower,
    stack DINO channels first then SigLIP channels."""

    def __init__(
        self,
        image_size: int = 224,
        means: Sequence[Sequence[float]] = (DINO_MEAN, SIGLIP_MEAN),
        stds: Sequence[Sequence[float]] = (DINO_STD, SIGLIP_STD),
    ) -> None:
        if len(means) != 2 or len(stds) != 2:
            raise ValueError("need one mean and one std triple per tower (DINOv2, SigLIP)")
        self.image_size = image_size
        self.means = [tuple(float(x) for x in m) for m in means]
        self.stds = [tuple(float(x) for x in s) for s in stds]
        mean = torch.tensor([*self.means[0], *self.means[1]]).view(6, 1, 1)
        std = torch.tensor([*self.stds[0], *self.stds[1]]).view(6, 1, 1)
        self._mean, self._std = mean, std
        self._tables: dict[torch.device, torch.Tensor] = {}  # normalize_batch's lookup table per device

    def resize(self, image: ImageLike) -> Image.Image:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        image = image.convert("RGB")
        size = (self.image_size, self.image_size)
        return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """One image or a list -> float32 pixel_values (B, 6, S, S)."""
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        pixels = torch.from_numpy(self._resized(images)).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S)
        return (pixels.repeat(1, 2, 1, 1) - self._mean) / self._std  # (B, 6, S, S)

    def pixel_values(self, images: Sequence[ImageLike], device: torch.device | str = "cpu") -> torch.Tensor:
        """`__call__` with the result on `device`, bit-equal to it. On an accelerator the images travel as uint8 and
        are normalized there (`normalize_batch`): 1/8 of the bytes of float32 pixel values, and no per-pixel float
        work on the host, which an evaluation does for every env every step."""
        device = torch.device(device)
        if device.type == "cpu":
            return self(list(images))
        return self.normalize_batch(torch.from_numpy(self._resized(images)).to(device, non_blocking=True))

    def _resized(self, images: Sequence[ImageLike]) -> np.ndarray:
        """uint8 (B, S, S, 3): every image squash-resized to `image_size`."""
        return np.stack([np.asarray(self.resize(im), dtype=np.uint8) for im in images])

    def normalize_batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) already at `image_size`, on any device -> float32 pixel_values (B, 6, S, S) on that
        device, bit-equal to `__call__` on the same images: a (6, 256) table of `__call__`'s arithmetic, computed on
        the CPU (a GPU rounds `x / 255` differently), is looked up on the device."""
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"normalize_batch expects a uint8 (B, S, S, 3) tensor, got {type(images).__name__}")
        size = self.image_size
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (size, size, 3):
            raise ValueError(
                f"normalize_batch expects uint8 (B, {size}, {size}, 3), got {images.dtype} {tuple(images.shape)}: it "
                "does not resize; pass images of image_size (or use __call__, which resizes)"
            )
        if images.device not in self._tables:
            levels = torch.arange(256, dtype=torch.uint8).float().div_(255.0).view(1, 256)
            table = (levels - self._mean.view(6, 1)) / self._std.view(6, 1)  # (6, 256)
            self._tables[images.device] = table.flatten().to(images.device)
        channels = images.permute(0, 3, 1, 2).repeat(1, 2, 1, 1).long()  # (B, 6, S, S) levels of RGB RGB
        offsets = torch.arange(0, 6 * 256, 256, device=images.device).view(1, 6, 1, 1)
        return self._tables[images.device][channels + offsets]  # (B, 6, S, S)

    def to_preprocessor_config(self) -> dict[str, Any]:
        """The official `preprocessor_config.json` content."""
        size = [self.image_size, self.image_size]
        return {
            "auto_map": {},
            "image_processor_type": "PrismaticImageProcessor",
            "processor_class": "PrismaticProcessor",
            "use_fused_vision_backbone": True,
            "image_resize_strategy": "resize-naive",
            "input_sizes": [[3, *size], [3, *size]],
            "interpolations": ["bicubic", "bicubic"],
            "means": [list(IMAGENET_MEAN), list(SIGLIP_MEAN)],
            "stds": [list(IMAGENET_STD), list(SIGLIP_STD)],
            "tvf_resize_params": [{"size": size, "interpolation": 3, "max_size": None, "antialias": True}] * 2,
            "tvf_crop_params": [{"output_size": size}] * 2,
            "tvf_normalize_params": [
                {"mean": list(m), "std": list(s), "inplace": False} for m, s in zip(self.means, self.stds, strict=True)
            ],
            "tvf_do_letterbox": False,
            "tvf_letterbox_fill": None,
        }

    @classmethod
    def from_preprocessor_config(cls, config: dict[str, Any] | str | Path) -> ImageProcessor:
        """Build from an official `preprocessor_config.json` (path or dict). `tvf_normalize_params` wins over
        `means`/`stds`, as it does when the official processor loads (its values are the bf16-rounded ones)."""
        if not isinstance(config, dict):
            config = json.loads(Path(config).read_text())
        if config.get("image_resize_strategy", "resize-naive") != "resize-naive":
            raise ValueError(
                f"image_resize_strategy {config['image_resize_strategy']!r} is not supported; "
                "OpenVLA checkpoints use 'resize-naive'"
            )
        if "tvf_normalize_params" in config:
            means = [p["mean"] for p in config["tvf_normalize_params"]]
            stds = [p["std"] for p in config["tvf_normalize_params"]]
        else:
            means, stds = config["means"], config["stds"]
        size = config.get("input_sizes", [[3, 224, 224]])[0][-1]
        return cls(image_size=size, means=means, stds=stds)

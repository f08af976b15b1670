"""Train-time image augmentation as OpenVLA applies it (dlimp's `augment_image`): random resized crop,
then brightness, contrast, saturation and hue, each clipped to [0, 1]. Stateless: one seed fixes the whole result.
`augment_batch` is a batched PyTorch port of the same chain (any device, no TensorFlow) for GPU data paths.

TensorFlow is imported inside the functions (LIBERO's renderer crashes in a process that has imported it), through
`vla.tf_import.import_tf`, which orders it after Triton.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AugmentConfig:
    """OpenVLA's `image_augment_kwargs` for LIBERO fine-tuning (`RLDSDataset.__init__`, `image_aug=True`)."""

    crop_area: float = 0.9  # fraction of the image area the random crop keeps (scale=[0.9, 0.9])
    crop_ratio: float = 1.0  # width / height of the crop (ratio=[1.0, 1.0])
    brightness: float = 0.2  # additive delta ~ U(-0.2, 0.2) on [0, 1] pixels
    contrast: tuple[float, float] = (0.8, 1.2)  # contrast factor range
    saturation: tuple[float, float] = (0.8, 1.2)  # saturation factor range
    hue: float = 0.05  # hue shift ~ U(-0.05, 0.05) of a full turn


def _random_resized_crop(image, area: float, ratio: float, seed):
    """float (H, W, 3) -> float (H, W, 3): crop a box of `area` and aspect `ratio`, bilinear back to (H, W).

    Quirk kept from dlimp: every draw (scale, ratio, y offset, x offset) uses the same stateless seed, so with equal
    height and width ranges the y and x offsets are equal and the crop only slides along the image diagonal.
    """
    from vla.tf_import import import_tf

    tf, _ = import_tf()
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    scale = tf.random.stateless_uniform((1,), seed, area, area)
    log_ratio = tf.math.log(tf.constant(ratio, tf.float32))
    aspect = tf.exp(tf.random.stateless_uniform((1,), seed, log_ratio, log_ratio))
    box_h = tf.clip_by_value(tf.sqrt(scale / aspect), 0.0, 1.0)
    box_w = tf.clip_by_value(tf.sqrt(scale * aspect), 0.0, 1.0)
    y0 = tf.random.stateless_uniform((1,), seed, 0.0, 1.0 - box_h)
    x0 = tf.random.stateless_uniform((1,), seed, 0.0, 1.0 - box_w)
    boxes = tf.stack([y0, x0, y0 + box_h, x0 + box_w], axis=1)  # (1, 4) normalized [y1, x1, y2, x2]
    return tf.image.crop_and_resize(image[None], boxes, tf.zeros((1,), tf.int32), (height, width))[0]


def augment_image(image, seed, cfg: AugmentConfig | None = None):
    """uint8 (H, W, 3) -> uint8 (H, W, 3), numpy in -> numpy out, tf in -> tf out (usable inside `tf.data.map`).

    `seed`: an int or a (2,) integer tensor. The same seed gives the same pixels; each op gets its own sub-seed
    derived from it with `stateless_uniform`, so crop, brightness, contrast, saturation and hue are independent.
    """
    from vla.tf_import import import_tf

    tf, _ = import_tf()
    cfg = cfg or AugmentConfig()
    as_numpy = isinstance(image, np.ndarray)
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8 or image.shape.rank != 3:
        raise ValueError(f"augment_image expects a uint8 (H, W, 3) image, got {image.dtype.name} {image.shape}")
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    seed = tf.stack([seed, tf.zeros_like(seed)]) if seed.shape.rank == 0 else tf.reshape(seed, (2,))
    op_seeds = tf.random.stateless_uniform((5, 2), seed, minval=None, maxval=None, dtype=tf.int32)

    def factor(random_op, fixed_op, bounds):  # TF refuses lower == upper: a fixed factor then
        lower, upper = bounds
        return (lambda x, s: fixed_op(x, lower)) if lower == upper else (lambda x, s: random_op(x, lower, upper, s))

    ops = (
        lambda x, s: _random_resized_crop(x, cfg.crop_area, cfg.crop_ratio, s),
        lambda x, s: tf.image.stateless_random_brightness(x, cfg.brightness, seed=s),
        factor(tf.image.stateless_random_contrast, tf.image.adjust_contrast, cfg.contrast),
        factor(tf.image.stateless_random_saturation, tf.image.adjust_saturation, cfg.saturation),
        lambda x, s: tf.image.stateless_random_hue(x, cfg.hue, seed=s),
    )
    x = tf.image.convert_image_dtype(image, tf.float32)  # [0, 1]
    for i, op in enumerate(ops):
        x = tf.clip_by_value(op(x, op_seeds[i]), 0.0, 1.0)
    out = tf.image.convert_image_dtype(x, tf.uint8, saturate=True)
    return out.numpy() if as_numpy else out


# PyTorch port (batched, any device) for training data paths without TensorFlow. Each op mirrors the float32 CPU
# kernel TF runs (crop_and_resize, AdjustContrastv2, AdjustSaturation, AdjustHue), so the result matches TF's chain
# on the same parameters to within float rounding; the random draws come from a torch.Generator instead of TF's seeds.

# Row k: which of (low, mid, high) lands in (R, G, B) for hue sextant k. Row 6 is TF's `default:` (all low): in
# AdjustSaturation a hue just below 1 can round to sextant 6, turning that pixel grey; kept, as TF does it.
_SEXTANT_RGB = ((2, 1, 0), (1, 2, 0), (0, 2, 1), (0, 1, 2), (1, 0, 2), (2, 0, 1), (0, 0, 0))


def sample_augmentation(
    batch_size: int, generator: torch.Generator, cfg: AugmentConfig | None = None
) -> dict[str, torch.Tensor]:
    """Per-image parameters drawn from `generator` (a CPU generator), all float32 on the CPU.

    `crop (B, 4)`: box (y0, x0, h, w) as fractions of the image; like dlimp (see `_random_resized_crop`) one uniform
    draw sets both offsets, so the box slides along the diagonal. `brightness (B,)` additive delta, `contrast (B,)`
    and `saturation (B,)` factors, `hue (B,)` shift in turns; each uniform over its `AugmentConfig` range.
    """
    cfg = cfg or AugmentConfig()
    u = torch.rand((batch_size, 5), generator=generator, dtype=torch.float32)  # (B, 5) in [0, 1)
    box_h = min(math.sqrt(cfg.crop_area / cfg.crop_ratio), 1.0)
    box_w = min(math.sqrt(cfg.crop_area * cfg.crop_ratio), 1.0)

    def uniform(col: int, low: float, high: float) -> torch.Tensor:  # TF's stateless_uniform: u * (high - low) + low
        return u[:, col] * (high - low) + low

    crop = torch.stack([uniform(0, 0.0, 1 - box_h), uniform(0, 0.0, 1 - box_w)], 1)  # (B, 2) y0, x0
    crop = torch.cat([crop, torch.tensor([[box_h, box_w]]).expand(batch_size, 2)], 1)  # (B, 4)
    return {
        "crop": crop,
        "brightness": uniform(1, -cfg.brightness, cfg.brightness),
        "contrast": uniform(2, *cfg.contrast),
        "saturation": uniform(3, *cfg.saturation),
        "hue": uniform(4, -cfg.hue, cfg.hue),
    }


def _crop_and_resize(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """float (B, H, W, C), boxes (B, 4) normalized (y1, x1, y2, x2) -> (B, H, W, C): tf.image.crop_and_resize's
    bilinear kernel, sample points that fall outside the image included (TF writes 0 there)."""
    _, h, w, _ = x.shape

    def axis(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        scale = (hi - lo) * (n - 1) / (n - 1)  # TF: (y2 - y1) * (H - 1) / (crop_h - 1), crop size = image size
        pos = lo[:, None] * (n - 1) + torch.arange(n, device=x.device, dtype=x.dtype) * scale[:, None]  # (B, n)
        lo_i = pos.floor().clamp(0, n - 1).long()
        return lo_i, pos.ceil().clamp(0, n - 1).long(), pos - pos.floor(), (pos >= 0) & (pos <= n - 1)

    top, bottom, y_lerp, y_ok = axis(boxes[:, 0], boxes[:, 2], h)
    left, right, x_lerp, x_ok = axis(boxes[:, 1], boxes[:, 3], w)
    cols = [torch.gather(x, 2, i[:, None, :, None].expand_as(x)) for i in (left, right)]  # 2 x (B, H, W, C)
    x = cols[0] + (cols[1] - cols[0]) * x_lerp[:, None, :, None]  # every input row lerped along x, as TF does first
    top_v, bot_v = (torch.gather(x, 1, i[:, :, None, None].expand_as(x)) for i in (top, bottom))
    out = top_v + (bot_v - top_v) * y_lerp[:, :, None, None]
    return out * (y_ok[:, :, None] & x_ok[:, None, :])[..., None]


def _adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """float (B, H, W, C), factor (B,) -> (B, H, W, C): TF's AdjustContrastv2 on CPU, `mean + factor * (x - mean)`
    with the per-image, per-channel mean summed as TF sums it (fold the top half of the pixels onto the bottom)."""
    b, h, w, c = x.shape
    s = x.reshape(b, h * w, c)
    while s.shape[1] > 1:  # log2(H * W) rounds, each over the whole batch
        right = s.shape[1] // 2
        left = s.shape[1] - right
        s = torch.cat([s[:, :right] + s[:, left:], s[:, right:left]], 1)
    mean = (s * (1.0 / (h * w))).view(b, 1, 1, c)
    return mean + factor[:, None, None, None] * (x - mean)


def _from_sextant(sextant: torch.Tensor, low: torch.Tensor, mid: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(…,) int sextant in [0, 6] and the (…,) low / mid / high channel values -> (…, 3) RGB, as TF's kernels do."""
    table = torch.tensor(_SEXTANT_RGB).to(low.device, non_blocking=True)  # a blocking copy would sync with CUDA
    return torch.gather(torch.stack([low, mid, high], -1), -1, table[sextant])


def _adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """float (B, H, W, 3), factor (B,) -> (B, H, W, 3): TF's AdjustSaturation (HSV, s * factor clipped to [0, 1])."""
    r, g, b = x.unbind(-1)
    v, lo = x.amax(-1), x.amin(-1)
    rng = v - lo
    s = torch.where(v > 0, rng / v, 0.0)
    norm = 1.0 / (6.0 * rng)
    # TF adds the sextant offsets 2/6 and 4/6 as doubles: the same rounding needs float64 here
    h = torch.where(g == v, (norm * (b - r)).double() + 2 / 6, (norm * (r - g)).double() + 4 / 6).float()
    h = torch.where(r == v, norm * (g - b), h)
    h = torch.where(rng > 0, h, 0.0)
    h = torch.where(h < 0, h + 1, h)
    s = (s * factor[:, None, None]).clamp(0.0, 1.0)
    c = s * v
    dh = h * 6
    x_ = c * (1 - (dh.remainder(2.0) - 1).abs())  # TF's `fmodu`: dh folded into [0, 2)
    return _from_sextant(dh.long(), torch.zeros_like(c), x_, c) + (v - c)[..., None]


def _adjust_hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """float (B, H, W, 3), delta (B,) in turns -> (B, H, W, 3): TF's AdjustHue (hue in sextants, min and max kept)."""
    r, g, b = x.unbind(-1)
    sextant = torch.where(  # TF's sextant of the hue (ties may fall either side: same colour)
        r < g,
        torch.where(b < r, 1.0, torch.where(b > g, 3.0, 2.0)),
        torch.where(b < g, 0.0, torch.where(b > r, 4.0, 5.0)),
    )
    lo, hi = x.amin(-1), x.amax(-1)
    mid = torch.maximum(torch.minimum(r, g), torch.minimum(torch.maximum(r, g), b))  # median of r, g, b
    ratio = (mid - lo) / (hi - lo)
    h = torch.where(hi == lo, 0.0, sextant + torch.where(sextant.remainder(2) == 0, ratio, 1 - ratio))  # [0, 6)
    h = h + delta[:, None, None] * 6
    h = torch.where(h < 0, h + 6, h)
    h = torch.where(h >= 6, h - 6, h)
    sextant = h.floor()
    ratio = h - sextant
    ratio = torch.where(sextant.remainder(2) == 0, ratio, 1 - ratio)
    return _from_sextant(sextant.long(), lo, lo + ratio * (hi - lo), hi)


def apply_augmentation(images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """uint8 (B, H, W, 3) on any device -> uint8 (B, H, W, 3): `augment_image`'s chain with the given parameters
    (see `sample_augmentation`): crop and resize, brightness, contrast, saturation, hue, each clipped to [0, 1]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < 2:
        raise ValueError(
            f"apply_augmentation expects uint8 (B, H, W, 3) images with H, W >= 2, got {images.dtype} {images.shape}"
        )
    p = {k: v.to(images.device, non_blocking=True) for k, v in params.items()}
    y0, x0, h, w = p["crop"].unbind(1)
    x = images.float() * (1.0 / 255)  # convert_image_dtype: multiply by float32(1 / 255)
    x = _crop_and_resize(x, torch.stack([y0, x0, y0 + h, x0 + w], 1)).clamp(0.0, 1.0)
    x = (x + p["brightness"][:, None, None, None]).clamp(0.0, 1.0)
    x = _adjust_contrast(x, p["contrast"]).clamp(0.0, 1.0)
    x = _adjust_saturation(x, p["saturation"]).clamp(0.0, 1.0)
    x = _adjust_hue(x, p["hue"]).clamp(0.0, 1.0)
    return (x * 255.5).clamp(0, 255).to(torch.uint8)  # convert_image_dtype(saturate=True): scale by 255.5, truncate


def augment_batch(images: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3) on any device -> uint8 (B, H, W, 3): fresh per-image parameters from `generator` (CPU)."""
    return apply_augmentation(images, sample_augmentation(images.shape[0], generator, cfg))

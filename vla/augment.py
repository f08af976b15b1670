"""Train-time image augmentation as OpenVLA applies it (dlimp's `augment_image`, reference §9): random resized crop,
then brightness, contrast, saturation and hue, each clipped to [0, 1]. Stateless: one seed fixes the whole result.

TensorFlow is imported inside the functions (LIBERO's renderer crashes in a process that has imported it), through
`vla.rlds.import_tf`, which orders it after Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    from vla.rlds import import_tf

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
    from vla.rlds import import_tf

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

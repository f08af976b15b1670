"""TensorFlow image ops shared by the RLDS pipeline and LIBERO evaluation, so both see identical pixels.

TensorFlow is imported inside each function: LIBERO's renderer crashes in a process that has imported it.
"""

from __future__ import annotations

import numpy as np

CROP_AREA = 0.9  # OpenVLA's train-time random crop keeps 90 % of the area; eval uses the centered version


def _tf():
    from vla.rlds import import_tf  # imports Triton before TF where installed (the other order segfaults)

    return import_tf()[0]


def resize_image(image, size: int = 224):
    """uint8 (..., H, W, 3) -> uint8 (..., size, size, 3): lanczos3 with antialias, rounded and clipped (dlimp's
    `resize_image`). Accepts numpy or tf tensors; returns the same kind."""
    tf = _tf()
    as_numpy = isinstance(image, np.ndarray)
    resized = tf.image.resize(image, (size, size), method="lanczos3", antialias=True)
    out = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return out.numpy() if as_numpy else out


def jpeg_roundtrip(image: np.ndarray) -> np.ndarray:
    """Encode with TF's JPEG encoder (quality 95) and decode again, as the RLDS builder stored the training images."""
    tf = _tf()
    encoded = tf.image.encode_jpeg(tf.convert_to_tensor(image, dtype=tf.uint8))
    return tf.io.decode_image(encoded, expand_animations=False, dtype=tf.uint8).numpy()


def center_crop(image, area: float = CROP_AREA):
    """uint8 (H, W, 3) -> uint8 (H, W, 3): the centered crop keeping `area` of the image, bilinear back to (H, W)
    (`tf.image.crop_and_resize`, as OpenVLA's eval `center_crop`)."""
    tf = _tf()
    as_numpy = isinstance(image, np.ndarray)
    height, width = int(image.shape[0]), int(image.shape[1])
    # Computed in float32 by TF, as the reference does, so the box matches to the last bit.
    side = tf.clip_by_value(tf.sqrt(tf.constant([area], tf.float32)), 0.0, 1.0)
    offset = (1.0 - side) / 2.0
    boxes = tf.stack([offset, offset, offset + side, offset + side], axis=1)
    floats = tf.image.convert_image_dtype(tf.convert_to_tensor(image), tf.float32)[None]
    cropped = tf.image.crop_and_resize(floats, boxes, tf.range(1), (height, width))[0]
    out = tf.image.convert_image_dtype(tf.clip_by_value(cropped, 0.0, 1.0), tf.uint8, saturate=True)
    return out.numpy() if as_numpy else out

"""Image ops shared by the training data and LIBERO evaluation, so both see the same pixels: the lanczos3 resize, the
JPEG round trip and the eval center crop, each with two backends.

- `"tf"`: TensorFlow's own ops, as OpenVLA runs them (imported inside the functions through `vla.tf_import`:
  LIBERO's renderer crashes in a process that has imported TensorFlow).
- `"numpy"`: TF-free ports for machines without TensorFlow (the GPU machine). Measured against the TF ops
  (tests/test_image_ops.py) on 256x256 images resized to 224:
  - `resize_image`: TF's scale_and_translate with the lanczos3 kernel, written from its definition. Random noise
    and smooth scenes: max 1 grey level on < 0.003 per cent of the values (float32 rounding ties at .5), mean
    deviation < 0.0001.
  - `jpeg_roundtrip`: Pillow's libjpeg at quality 95, 4:2:0 chroma, as TF encodes. Pillow decodes the same bytes
    bit-identically to TF's `decode_jpeg(dct_method="INTEGER_ACCURATE")`; the whole difference is that TF decodes
    with libjpeg's fast integer IDCT by default. Smooth scenes: mean 1.0-1.1 grey levels, 99.9th percentile 6, max
    5 (no sharp edges) to 14 (sharp boxes); random noise: mean 1.5, max 10.
  - `center_crop`: TF's crop_and_resize bilinear kernel in numpy float32 (as `vla.augment`'s torch port): bit-identical.

`backend=None` picks `"tf"` where TensorFlow is installed, else `"numpy"` (`default_backend`).
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np

from vla.tf_import import tf_available

CROP_AREA = 0.9  # OpenVLA's train-time random crop keeps 90 % of the area; eval uses the centered version
JPEG_QUALITY = 95  # tf.image.encode_jpeg's default, with which the RLDS builder stored the training images
BACKENDS = ("tf", "numpy")
LANCZOS_RADIUS = 3


def default_backend() -> str:
    """`"tf"` where TensorFlow is installed (OpenVLA's exact ops), else `"numpy"`."""
    return "tf" if tf_available() else "numpy"


def _backend(backend: str | None) -> str:
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"image backend {backend!r} is not one of {BACKENDS}")
    return backend


def _tf():
    from vla.tf_import import import_tf  # imports Triton before TF where installed (the other order segfaults)

    return import_tf()[0]


def _lanczos3(x: np.ndarray) -> np.ndarray:
    """TF's LanczosKernelFunc(3) in float32: 1 near 0, 0 beyond the radius, else 3 sin(pi x) sin(pi x / 3) / (pi x)^2."""
    pi, r = np.float32(3.14159265359), np.float32(LANCZOS_RADIUS)  # TF's own constant for pi
    x = np.abs(x).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = r * np.sin(pi * x) * np.sin(pi * x / r) / (pi * pi * x * x)
    return np.where(x > r, np.float32(0), np.where(x <= 1e-3, np.float32(1), value)).astype(np.float32)


@functools.cache
def lanczos3_weights(in_size: int, out_size: int) -> np.ndarray:
    """float32 (out_size, in_size): TF's scale_and_translate spans for the lanczos3 kernel with antialias, scale
    out/in, no translation. Output pixel x samples the input at (x + 0.5) / scale; the kernel is widened by 1/scale
    when downsampling; each row's weights are normalized to sum to 1 (all computed in float32 as TF does)."""
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0) / scale
    kernel_scale = max(inv_scale, np.float32(1.0))  # antialias: widen the kernel only when shrinking
    radius = np.float32(LANCZOS_RADIUS) * kernel_scale
    weights = np.zeros((out_size, in_size), np.float32)
    for x in range(out_size):
        sample = (np.float32(x) + np.float32(0.5)) * inv_scale
        if sample < 0 or sample > in_size:
            continue
        start = min(max(math.ceil(sample - radius - np.float32(0.5)), 0), in_size - 1)
        end = min(max(math.floor(sample + radius - np.float32(0.5)), 0), in_size - 1) + 1
        sources = np.arange(start, end, dtype=np.float32)
        w = _lanczos3((sources + np.float32(0.5) - sample) * (np.float32(1.0) / kernel_scale))
        total = w.sum(dtype=np.float32)
        if abs(total) >= 1000 * np.finfo(np.float32).tiny:
            w = w * (np.float32(1.0) / total)
        weights[x, start:end] = w
    return weights


def _resize_numpy(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (..., H, W, C) -> uint8 (..., size, size, C): rows resampled first, then columns, as TF's kernel."""
    rows, cols = lanczos3_weights(image.shape[-3], size), lanczos3_weights(image.shape[-2], size)
    if image.ndim > 3:  # one image at a time: ~2x faster than one broadcast matmul over the batch (measured)
        flat = image.reshape(-1, *image.shape[-3:])
        return np.stack([_resize_numpy(im, size) for im in flat]).reshape(*image.shape[:-3], size, size, -1)
    x = np.moveaxis(image, -1, 0).astype(np.float32)  # (C, H, W): two BLAS matmuls per channel plane
    x = np.matmul(np.matmul(rows, x), cols.T)  # (C, size, size)
    return np.moveaxis(np.clip(np.round(x), 0, 255).astype(np.uint8), 0, -1)


def resize_image(image, size: int = 224, backend: str | None = None):
    """uint8 (..., H, W, 3) -> uint8 (..., size, size, 3): lanczos3 with antialias, rounded and clipped (dlimp's
    `resize_image`). `"tf"` accepts numpy or tf tensors and returns the same kind; `"numpy"` takes numpy."""
    if _backend(backend) == "numpy":
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim < 3:
            raise ValueError(f"resize_image expects uint8 (..., H, W, C) images, got {image.dtype} {image.shape}")
        return _resize_numpy(image, size)
    tf = _tf()
    as_numpy = isinstance(image, np.ndarray)
    resized = tf.image.resize(image, (size, size), method="lanczos3", antialias=True)
    out = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return out.numpy() if as_numpy else out


def jpeg_roundtrip(image: np.ndarray, backend: str | None = None) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (H, W, 3): JPEG-encode at quality 95 (4:2:0 chroma) and decode again, as the RLDS
    builder stored the training images (`"tf"`: TF's encoder and decoder; `"numpy"`: Pillow's, see the module doc)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"jpeg_roundtrip expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if _backend(backend) == "numpy":
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0")
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert("RGB"))
    tf = _tf()
    encoded = tf.image.encode_jpeg(tf.convert_to_tensor(image, dtype=tf.uint8), quality=JPEG_QUALITY)
    return tf.io.decode_image(encoded, expand_animations=False, dtype=tf.uint8).numpy()


def _center_box(area: float) -> np.ndarray:
    """(1, 4) float32 box [y1, x1, y2, x2] of the centered crop keeping `area`, computed in float32 as TF does."""
    side = np.clip(np.sqrt(np.float32(area)), np.float32(0), np.float32(1)).astype(np.float32)
    offset = (np.float32(1) - side) / np.float32(2)
    return np.array([[offset, offset, offset + side, offset + side]], np.float32)


def _center_crop_numpy(image: np.ndarray, area: float) -> np.ndarray:
    """`center_crop` in numpy float32, op for op as TF's crop_and_resize bilinear kernel (and `vla.augment`'s torch
    port of it, which training uses): no torch either, so simulation workers can run it."""
    height, width = image.shape[:2]
    y1, x1, y2, x2 = _center_box(area)[0]
    x = image.astype(np.float32) * np.float32(1.0 / 255)  # convert_image_dtype

    def axis(lo: np.float32, hi: np.float32, n: int) -> tuple[np.ndarray, ...]:
        scale = (hi - lo) * np.float32(n - 1) / np.float32(n - 1)  # TF: (y2 - y1) * (H - 1) / (crop_h - 1)
        pos = lo * np.float32(n - 1) + np.arange(n, dtype=np.float32) * scale
        low = np.floor(pos)
        return (np.clip(low, 0, n - 1).astype(np.intp), np.clip(np.ceil(pos), 0, n - 1).astype(np.intp), pos - low,
                (pos >= 0) & (pos <= n - 1))  # fmt: skip

    top, bottom, y_lerp, y_ok = axis(y1, y2, height)
    left, right, x_lerp, x_ok = axis(x1, x2, width)
    x = x[:, left] + (x[:, right] - x[:, left]) * x_lerp[None, :, None]  # every row lerped along x first, as TF
    x = x[top] + (x[bottom] - x[top]) * y_lerp[:, None, None]
    x = np.clip(x * (y_ok[:, None] & x_ok[None, :])[..., None], np.float32(0), np.float32(1))
    return np.clip(x * np.float32(255.5), 0, 255).astype(np.uint8)  # convert_image_dtype(saturate=True)


def center_crop(image, area: float = CROP_AREA, backend: str | None = None):
    """uint8 (H, W, 3) -> uint8 (H, W, 3): the centered crop keeping `area` of the image, bilinear back to (H, W)
    (`tf.image.crop_and_resize`, as OpenVLA's eval `center_crop`)."""
    if _backend(backend) == "numpy":
        return _center_crop_numpy(np.asarray(image), area)
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

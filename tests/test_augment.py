import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from vla.augment import AugmentConfig, augment_image  # noqa: E402

CROP_ONLY = AugmentConfig(brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0)


def _scene(size: int = 224) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.clip(np.stack([200 * yy + 20, 180 * xx + 30, 100 + 60 * np.sin(6 * yy * xx)], -1), 0, 255).astype(
        np.uint8
    )


def test_keeps_shape_and_dtype_and_returns_the_input_kind():
    image = _scene()
    out = augment_image(image, 0)
    assert isinstance(out, np.ndarray) and out.shape == (224, 224, 3) and out.dtype == np.uint8
    out_tf = augment_image(tf.constant(image), tf.constant([0, 0]))
    assert isinstance(out_tf, tf.Tensor) and out_tf.dtype == tf.uint8 and tuple(out_tf.shape) == (224, 224, 3)


def test_reproducible_under_a_seed_and_different_across_seeds():
    image = _scene()
    np.testing.assert_array_equal(augment_image(image, 5), augment_image(image, 5))
    np.testing.assert_array_equal(augment_image(image, 5), augment_image(image, (5, 0)))
    outs = [augment_image(image, s).astype(int) for s in range(4)]
    assert all(np.abs(outs[0] - o).mean() > 1.0 for o in outs[1:])


def test_same_pixels_inside_tf_data_graph_as_eager():
    image = _scene()
    ds = tf.data.Dataset.from_tensors(image).map(lambda im: augment_image(im, tf.constant([9, 1], tf.int64)))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), augment_image(image, (9, 1)))


def test_disabled_ops_leave_the_image_unchanged():
    image = _scene()
    identity = AugmentConfig(crop_area=1.0, brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0)
    assert np.abs(augment_image(image, 3, identity).astype(int) - image).max() <= 1


def test_crop_keeps_90_percent_area_and_slides_only_along_the_diagonal():
    # Linear ramps survive bilinear resampling: the output's first pixel tells the crop box's corner.
    size = 224
    ramp = np.arange(size, dtype=np.float64)
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = ramp[:, None]  # red = row
    image[..., 1] = ramp[None, :]  # green = column
    side = math.sqrt(0.9)
    corners = []
    for seed in range(12):
        out = augment_image(image, seed, CROP_ONLY).astype(float)
        y0, x0 = out[0, 0, 0], out[0, 0, 1]
        assert abs(y0 - x0) <= 1.0  # OpenVLA's quirk: equal y and x offsets
        assert -1.0 <= y0 <= (1 - side) * size + 1.0
        span = out[-1, 0, 0] - out[0, 0, 0]  # rows covered by the crop
        assert abs(span - side * (size - 1)) <= 2.0
        corners.append(y0)
    assert max(corners) - min(corners) > 3.0  # the offset does vary with the seed


def test_color_jitter_stays_in_its_ranges():
    gray = np.full((32, 32, 3), 128, np.uint8)
    brightness_only = AugmentConfig(crop_area=1.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0)
    deltas = [augment_image(gray, s, brightness_only).astype(int).mean() - 128 for s in range(30)]
    assert max(np.abs(deltas)) <= 0.2 * 255 + 1 and np.std(deltas) > 5  # additive delta in [-0.2, 0.2]


def test_rejects_non_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        augment_image(np.zeros((8, 8, 3), np.float32), 0)

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from vla.image_ops import center_crop, jpeg_roundtrip, resize_image  # noqa: E402


def test_resize_keeps_constant_images_and_shapes():
    image = np.full((256, 256, 3), 77, np.uint8)
    out = resize_image(image)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and (out == 77).all()
    assert resize_image(np.zeros((4, 256, 256, 3), np.uint8)).shape == (4, 224, 224, 3)


def test_resize_matches_tf_lanczos3_rounded():
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    expected = tf.image.resize(image, (224, 224), method="lanczos3", antialias=True).numpy()
    np.testing.assert_array_equal(resize_image(image), np.clip(np.round(expected), 0, 255).astype(np.uint8))


def test_jpeg_roundtrip_is_lossy_but_close():
    yy, xx = np.mgrid[0:64, 0:64]
    image = np.stack([yy * 3, xx * 2, (yy + xx) % 200], axis=-1).astype(np.uint8)  # smooth, like a scene
    out = jpeg_roundtrip(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert 0 < np.abs(out.astype(int) - image).mean() < 3


def test_center_crop_samples_the_centered_box():
    # A horizontal ramp: bilinear crop_and_resize of a linear function is linear, so columns are computable.
    width = 224
    ramp = np.tile(np.arange(width, dtype=np.uint8)[None, :, None], (width, 1, 3))
    out = center_crop(ramp)
    side = np.float32(np.sqrt(np.float32(0.9)))
    offset = (1 - side) / 2
    x = (offset + np.arange(width) * side / (width - 1)) * (width - 1)  # source column of each output column
    np.testing.assert_allclose(out[0, :, 0], np.clip(np.round(x), 0, 255), atol=1)
    assert out.shape == ramp.shape and out.dtype == np.uint8

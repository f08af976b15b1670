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


# ---- the TF-free ("numpy") backend against the TF ops ----


def _smooth_scenes(count: int, size: int = 256) -> np.ndarray:
    """uint8 (count, size, size, 3): colour waves plus a few sharp boxes, like rendered scenes."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(count):
        freq, phase = rng.uniform(0.5, 2.0, (3, 2)), rng.uniform(0, 2 * np.pi, 3)
        waves = [np.sin(2 * np.pi * (f[0] * yy + f[1] * xx) + p) for f, p in zip(freq, phase, strict=True)]
        image = 128 + 90 * np.stack(waves, -1)
        for _ in range(4):
            r, c = rng.integers(0, size - 40, 2)
            image[r : r + 31, c : c + 17] = rng.integers(0, 256, 3)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(out)


def _noise(count: int) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (count, 256, 256, 3), dtype=np.uint8)


@pytest.mark.parametrize("images", [_noise(4), _smooth_scenes(4)], ids=["noise", "scenes"])
def test_numpy_lanczos3_matches_tf_to_one_grey_level(images):
    # Measured: max 1 grey level on < 0.003 % of the values (float32 ties at .5), mean < 0.0001.
    error = np.abs(resize_image(images, 224, backend="numpy").astype(int) - resize_image(images, 224, backend="tf"))
    assert error.max() <= 1 and error.mean() < 1e-4 and (error > 0).mean() < 1e-4
    upscaled = resize_image(images[:, :100, :150], 224, backend="numpy").astype(int)  # non-square, upsampling
    assert np.abs(upscaled - resize_image(images[:, :100, :150], 224, backend="tf")).max() <= 1


def test_lanczos3_weights_are_normalized_and_local():
    from vla.image_ops import lanczos3_weights

    weights = lanczos3_weights(256, 224)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
    support = (weights != 0).sum(1)
    assert support.max() <= 2 * np.ceil(3 * 256 / 224) + 1  # the widened lanczos3 span


@pytest.mark.parametrize(("images", "max_error", "mean_error"), [(_noise(4), 12, 2.0), (_smooth_scenes(4), 16, 1.3)],
                         ids=["noise", "scenes"])  # fmt: skip
def test_numpy_jpeg_roundtrip_is_close_to_tf(images, max_error, mean_error):
    # Measured: noise max 9-10, mean 1.5; scenes with sharp boxes max 14, mean 1.07, 99.9th percentile 6 grey levels
    # (TF decodes with the fast integer IDCT, Pillow with the accurate one).
    for image in images:
        got = jpeg_roundtrip(image, backend="numpy")
        error = np.abs(got.astype(int) - jpeg_roundtrip(image, backend="tf"))
        assert error.max() <= max_error and error.mean() < mean_error, (error.max(), error.mean())
        encoded = tf.image.encode_jpeg(image, quality=95)  # same coefficients: the accurate IDCT decodes ours exactly
        np.testing.assert_array_equal(got, tf.io.decode_jpeg(encoded, dct_method="INTEGER_ACCURATE").numpy())


def test_numpy_center_crop_is_bit_identical_to_tf_and_the_training_port():
    import torch

    from vla.augment import _crop_and_resize
    from vla.image_ops import _center_box

    noise = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    for image in [*resize_image(_smooth_scenes(3), 224, backend="tf"), *noise]:
        got = center_crop(image, backend="numpy")
        np.testing.assert_array_equal(got, center_crop(image, backend="tf"))
        x = torch.from_numpy(image[None].astype(np.float32)) * np.float32(1 / 255)  # the kernel augmenting training
        x = _crop_and_resize(x, torch.from_numpy(_center_box(0.9))).clamp(0, 1)
        np.testing.assert_array_equal(got, (x[0] * 255.5).clamp(0, 255).to(torch.uint8).numpy())


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="torch"):
        resize_image(np.zeros((8, 8, 3), np.uint8), 4, backend="torch")

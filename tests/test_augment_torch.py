"""The PyTorch port of the train-time augmentation (`augment_batch`) against TensorFlow's ops, op by op and chained."""

import math

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from vla.augment import (
    AugmentConfig,
    _adjust_contrast,
    _adjust_hue,
    _adjust_saturation,
    _crop_and_resize,
    apply_augmentation,
    augment_batch,
    sample_augmentation,
)

SIDE = math.sqrt(0.9)
IDENTITY = {"crop": (0.0, 0.0, 1.0, 1.0), "brightness": 0.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
# Per op, one value per image of a batch of 4: range ends, the middle, and values past the training ranges.
OP_VALUES = {
    "crop": [
        (0.0, 0.0, SIDE, SIDE),
        (1 - SIDE, 1 - SIDE, SIDE, SIDE),
        (0.021, 0.021, SIDE, SIDE),
        (0.1, 0.0, 0.8, 0.6),
    ],
    "brightness": [-0.2, 0.2, 0.05, -0.5],
    "contrast": [0.8, 1.2, 1.03, 2.0],
    "saturation": [0.8, 1.2, 0.97, 0.0],
    "hue": [-0.05, 0.05, 0.013, 0.45],
}
SIZES = [(224, 224), (96, 160), (5, 7)]


@pytest.fixture(scope="module")
def tf():
    from vla.tf_import import import_tf  # never `import tensorflow` directly: Triton must come first

    try:
        return import_tf()[0]
    except ImportError:
        pytest.skip("needs tensorflow")


def _scenes(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (B, H, W, 3): smooth gradients, flat discs, grey bands, sensor noise and saturated pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = []
    for _ in range(batch):
        a = rng.uniform(0.5, 1.5, 3)
        im = np.stack([200 * a[0] * yy + 20, 180 * a[1] * xx + 30, 100 + 60 * np.sin(6 * a[2] * yy * xx)], -1)
        for _ in range(5):
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(1, max(height, width) / 4)
            im[(yy * max(height, width) - cy) ** 2 + (xx * max(height, width) - cx) ** 2 < r * r] = rng.uniform(
                0, 255, 3
            )
        im[: max(1, height // 10)] = rng.uniform(0, 255)  # a grey band: hue undefined
        im += rng.normal(0, 6, im.shape)
        out.append(np.clip(im, 0, 255))
    return np.round(np.stack(out)).astype(np.uint8)


def _params(**per_op: list) -> dict[str, torch.Tensor]:
    """Parameters for a batch of 4: the given per-image values, identity for every other op."""
    merged = {op: per_op.get(op, [value] * 4) for op, value in IDENTITY.items()}
    return {op: torch.tensor(values, dtype=torch.float32) for op, values in merged.items()}


def _tf_chain(tf, images: np.ndarray, params: dict[str, torch.Tensor]) -> np.ndarray:
    """uint8 (B, H, W, 3): the TF ops `augment_image` runs, one image at a time, with the given parameters."""
    height, width = images.shape[1:3]
    out = []
    for i, image in enumerate(images):
        y0, x0, h, w = params["crop"][i].numpy()
        box = np.array([[y0, x0, y0 + h, x0 + w]], np.float32)
        x = tf.image.convert_image_dtype(image, tf.float32)
        x = tf.image.crop_and_resize(x[None], box, tf.zeros((1,), tf.int32), (height, width))[0]
        x = tf.clip_by_value(x, 0.0, 1.0)
        for op, fn in [
            ("brightness", tf.image.adjust_brightness),
            ("contrast", tf.image.adjust_contrast),
            ("saturation", tf.image.adjust_saturation),
            ("hue", tf.image.adjust_hue),
        ]:
            x = tf.clip_by_value(fn(x, float(params[op][i])), 0.0, 1.0)
        out.append(tf.image.convert_image_dtype(x, tf.uint8, saturate=True).numpy())
    return np.stack(out)


def _assert_matches_tf(ours: torch.Tensor, theirs: np.ndarray) -> None:
    diff = np.abs(ours.numpy().astype(int) - theirs.astype(int))
    assert diff.max() <= 1, f"max deviation {diff.max()} grey levels"
    assert (diff > 0).mean() < 1e-3  # the float math mirrors TF's kernels: off-by-one only at rounding ties


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", list(OP_VALUES))
def test_each_op_alone_matches_tensorflow(tf, op, size):
    images = _scenes(4, *size, seed=list(OP_VALUES).index(op))
    params = _params(**{op: OP_VALUES[op]})
    ours = apply_augmentation(torch.from_numpy(images), params)
    theirs = _tf_chain(tf, images, params)
    _assert_matches_tf(ours, theirs)
    if op != "crop" or size != (5, 7):  # each op really changes the image (a 5x7 crop may round back onto pixels)
        assert np.abs(theirs.astype(int) - images).mean() > 0.5


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_float_kernels_agree_with_tensorflow_to_below_one_ulp(tf, size):
    # The uint8 test above tolerates 1 grey level; in float32 the kernels mirror TF's CPU kernels operation for
    # operation (contrast's pairwise-folded mean, saturation's double-precision hue offsets), so they agree exactly.
    x = np.random.default_rng(0).uniform(0, 1, (4, *size, 3)).astype(np.float32)
    boxes = np.array([[y0, x0, y0 + h, x0 + w] for y0, x0, h, w in OP_VALUES["crop"]], np.float32)
    ours = [
        _crop_and_resize(torch.from_numpy(x), torch.from_numpy(boxes)),
        _adjust_contrast(torch.from_numpy(x), torch.tensor(OP_VALUES["contrast"])),
        _adjust_saturation(torch.from_numpy(x), torch.tensor(OP_VALUES["saturation"])),
        _adjust_hue(torch.from_numpy(x), torch.tensor(OP_VALUES["hue"])),
    ]
    theirs = [
        tf.image.crop_and_resize(x, boxes, tf.range(4), size),
        tf.stack([tf.image.adjust_contrast(x[i], OP_VALUES["contrast"][i]) for i in range(4)]),
        tf.stack([tf.image.adjust_saturation(x[i], OP_VALUES["saturation"][i]) for i in range(4)]),
        tf.stack([tf.image.adjust_hue(x[i], OP_VALUES["hue"][i]) for i in range(4)]),
    ]
    for name, a, b in zip(["crop", "contrast", "saturation", "hue"], ours, theirs, strict=True):
        assert np.abs(a.numpy() - b.numpy()).max() < np.finfo(np.float32).eps, name  # eps: one ulp at 1.0


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_full_chain_matches_tensorflow_with_the_same_parameters(tf, size):
    images = _scenes(6, *size, seed=1)
    params = sample_augmentation(6, torch.Generator().manual_seed(3))
    _assert_matches_tf(apply_augmentation(torch.from_numpy(images), params), _tf_chain(tf, images, params))


def test_keeps_the_tensorflow_saturation_quirk(tf):
    # A red pixel whose blue exceeds green by one ulp has a hue of -1e-8, +1 rounds to exactly 1.0, i.e. sextant 6,
    # which TF's AdjustSaturation kernel maps to grey (its `default:` branch), whatever the factor.
    green = np.float32(0.3)
    pixel = np.array([[[0.8, green, np.nextafter(green, np.float32(1))]]], np.float32)
    theirs = tf.image.adjust_saturation(pixel, 1.0).numpy()
    ours = _adjust_saturation(torch.from_numpy(pixel)[None], torch.tensor([1.0]))[0].numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert np.allclose(theirs, 0.3)


def test_identity_parameters_keep_the_image(tf):
    images = torch.from_numpy(_scenes(4, 64, 48))
    assert torch.equal(apply_augmentation(images, _params()), images)
    off = AugmentConfig(crop_area=1.0, brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0)
    assert torch.equal(augment_batch(images, torch.Generator().manual_seed(0), off), images)


def test_parameters_have_the_documented_shapes_and_follow_the_config_ranges():
    params = sample_augmentation(20000, torch.Generator().manual_seed(0))
    assert params["crop"].shape == (20000, 4) and all(v.dtype == torch.float32 for v in params.values())
    assert all(params[op].shape == (20000,) and params[op].device.type == "cpu" for op in OP_VALUES if op != "crop")
    y0, x0, h, w = params["crop"].unbind(1)
    assert torch.equal(y0, x0)  # dlimp's quirk: the crop slides along the diagonal
    assert torch.allclose(h, torch.full_like(h, SIDE)) and torch.allclose(w, torch.full_like(w, SIDE))
    for values, (low, high) in [
        (y0, (0.0, 1 - SIDE)),
        (params["brightness"], (-0.2, 0.2)),
        (params["contrast"], (0.8, 1.2)),
        (params["saturation"], (0.8, 1.2)),
        (params["hue"], (-0.05, 0.05)),
    ]:
        span = high - low
        assert low <= values.min() < low + 0.01 * span and high - 0.01 * span < values.max() <= high
        quartiles = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75]))
        assert torch.allclose(
            quartiles, torch.tensor([low + 0.25 * span, low + 0.5 * span, low + 0.75 * span]), atol=0.02 * span
        )


def test_a_non_square_crop_config_gives_its_box():
    cfg = AugmentConfig(crop_area=0.5, crop_ratio=0.5, brightness=0.1, contrast=(0.5, 0.6), saturation=(1.0, 1.0))
    params = sample_augmentation(1000, torch.Generator().manual_seed(0), cfg)
    y0, x0, h, w = params["crop"].unbind(1)
    assert torch.all(h == 1.0) and torch.allclose(w, torch.full_like(w, 0.5)) and torch.all(y0 == 0)
    assert 0 <= x0.min() < 0.01 and 0.49 < x0.max() < 0.5
    assert params["brightness"].abs().max() <= 0.1 and torch.all(params["saturation"] == 1.0)
    assert params["contrast"].min() >= 0.5 and params["contrast"].max() <= 0.6


def test_reproducible_under_a_seed_and_different_across_seeds():
    images = torch.from_numpy(_scenes(4, 32, 40))
    first = augment_batch(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, augment_batch(images, torch.Generator().manual_seed(7)))
    assert (first.int() - augment_batch(images, torch.Generator().manual_seed(8)).int()).abs().float().mean() > 1.0
    gen = torch.Generator().manual_seed(7)
    assert not torch.equal(augment_batch(images, gen), augment_batch(images, gen))  # the generator advances


def test_each_image_of_a_batch_gets_its_own_parameters():
    params = sample_augmentation(64, torch.Generator().manual_seed(0))
    assert all(len(torch.unique(v if v.ndim == 1 else v[:, 0])) == 64 for v in params.values())
    same = torch.from_numpy(_scenes(1, 48, 48)).expand(8, -1, -1, -1).contiguous()
    out = augment_batch(same, torch.Generator().manual_seed(0)).int()
    assert all((out[i] - out[j]).abs().float().mean() > 0.5 for i in range(8) for j in range(i))


def test_rejects_images_that_are_not_uint8_bhwc():
    gen = torch.Generator().manual_seed(0)
    for bad in (
        torch.zeros(2, 8, 8, 3),
        torch.zeros(8, 8, 3, dtype=torch.uint8),
        torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
    ):
        with pytest.raises(ValueError, match=r"uint8 \(B, H, W, 3\)"):
            augment_batch(bad, gen)


class _CountTorchCalls(TorchFunctionMode):
    """Counts the torch functions and tensor methods called from Python while active."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _torch_calls(images: torch.Tensor) -> int:
    with _CountTorchCalls() as counter:
        augment_batch(images, torch.Generator().manual_seed(0))
    return counter.calls


def test_batch_is_vectorized_not_a_loop_over_images():
    # A per-image Python loop would issue its ops once per image: 256 images would take ~256x the calls of one.
    one, batch = (torch.from_numpy(_scenes(n, 16, 16)) for n in (1, 256))
    calls_one, calls_batch = _torch_calls(one), _torch_calls(batch)
    assert calls_one > 10  # the counter sees the augmentation's ops
    assert calls_batch == calls_one, f"{calls_batch} torch calls for 256 images vs {calls_one} for one"


@pytest.mark.gpu
def test_cuda_matches_cpu_without_host_syncs():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    images = torch.from_numpy(_scenes(8, 224, 224, seed=2))
    params = sample_augmentation(8, torch.Generator().manual_seed(1))
    on_gpu = images.cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = apply_augmentation(on_gpu, params)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device == on_gpu.device and out.dtype == torch.uint8
    diff = (out.cpu().int() - apply_augmentation(images, params).int()).abs()
    assert (diff > 0).float().mean() < 1e-3
    # CUDA's fused multiply-adds move the crop's samples by ~1e-5, which can move the rare pixels that TF's
    # saturation kernel turns grey (see test_keeps_the_tensorflow_saturation_quirk): allow a handful.
    assert (diff > 1).float().mean() < 1e-5

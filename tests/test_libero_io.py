import subprocess
import sys

import numpy as np
import pytest

from vla.libero_io import (
    POLICY_FRAME,
    POLICY_IMAGE,
    WorkerImages,
    libero_action,
    libero_image,
    policy_images,
    resolve_suite_unnorm_key,
    worker_images,
)

GRAY_A, GRAY_B = 200, 40  # gray levels: R = G = B keeps JPEG's chroma at exactly 128


def _two_tone(height=256, width=256, split=128):
    """Gray image, GRAY_A left of column `split`, GRAY_B right of it (8x8 JPEG blocks never straddle the edge)."""
    image = np.full((height, width, 3), GRAY_B, np.uint8)
    image[:, :split] = GRAY_A
    return image


def _official_pipeline(agentview: np.ndarray, center_crop: bool) -> np.ndarray:
    """OpenVLA's eval image path written out with raw tf.image calls, independent of vla.image_ops."""
    tf = pytest.importorskip("tensorflow")
    img = agentview[::-1, ::-1]
    img = tf.image.encode_jpeg(img)
    img = tf.io.decode_image(img, expand_animations=False, dtype=tf.uint8)
    img = tf.image.resize(img, (224, 224), method="lanczos3", antialias=True)
    img = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8).numpy()
    if not center_crop:
        return img
    image = tf.image.convert_image_dtype(tf.convert_to_tensor(img), tf.float32)[None]
    side = tf.reshape(tf.clip_by_value(tf.sqrt(0.9), 0, 1), shape=(1,))
    offset = (1 - side) / 2
    boxes = tf.stack([offset, offset, offset + side, offset + side], axis=1)
    image = tf.image.crop_and_resize(image, boxes, tf.range(1), (224, 224))[0]
    image = tf.clip_by_value(image, 0, 1)
    return tf.image.convert_image_dtype(image, tf.uint8, saturate=True).numpy()


def _scene(seed=0, size=256):
    """Smooth gradients plus noise and a few sharp rectangles: exercises JPEG, ringing and clipping."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.stack([yy, xx, (yy + xx) / 2], axis=-1) * (255 / size) + rng.normal(0, 12, (size, size, 3))
    for _ in range(6):
        r, c = rng.integers(0, size - 40, 2)
        image[r : r + 37, c : c + 23] = rng.integers(0, 256, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(params=["tf", "numpy"])
def backend(request):
    """Both image backends; "tf" only where TensorFlow is installed."""
    if request.param == "tf":
        pytest.importorskip("tensorflow")
    return request.param


def test_import_does_not_load_tensorflow():
    code = "import sys, vla, vla.libero_io; assert 'tensorflow' not in sys.modules, 'TF imported at import time'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("center_crop", [False, True])
def test_constant_gray_survives_every_stage(center_crop, backend):
    out = libero_image(np.full((256, 256, 3), 77, np.uint8), center_crop=center_crop, backend=backend)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert (out == 77).all()


@pytest.mark.parametrize("center_crop", [False, True])
def test_rotation_moves_a_corner_mark_to_the_opposite_corner(center_crop, backend):
    image = np.zeros((256, 256, 3), np.uint8)
    image[:32, :32] = 255  # top-left in the raw render -> 28x28 at the bottom-right of the 224 image
    out = libero_image(image, center_crop=center_crop, backend=backend).astype(int)
    assert out[-20:, -20:].min() > 230
    assert out[:-40, :].max() < 25 and out[:, :-40].max() < 25  # nothing left at the top or on the left


@pytest.mark.parametrize("center_crop", [False, True])
def test_rotation_also_mirrors_left_right(center_crop, backend):
    # A vertical flip alone (a known mistake, openvla#295) would keep GRAY_A on the left.
    out = libero_image(_two_tone(), center_crop=center_crop, backend=backend)
    # The edge at column 128 of 256 lands on column 112 of 224 (the centered crop is symmetric, so it stays there);
    # away from the edge every stage preserves the constant level exactly.
    margin = 8
    assert (out[:, : 112 - margin] == GRAY_B).all()
    assert (out[:, 112 + margin :] == GRAY_A).all()


def test_resize_is_antialiased_lanczos_not_nearest(backend):
    # A 1-pixel checkerboard: nearest/bilinear without antialias alias to a pattern, lanczos3+antialias averages it.
    image = np.zeros((256, 256, 3), np.uint8)
    image[(np.add.outer(np.arange(256), np.arange(256)) % 2).astype(bool)] = 200
    out = libero_image(image, center_crop=False, backend=backend).astype(int)
    assert abs(out[8:-8, 8:-8].mean() - 100) < 6 and out[8:-8, 8:-8].std() < 25


def test_center_crop_zooms_in_by_the_crop_side(backend):
    # A centered square of side 100 on 224: after the crop (side sqrt(0.9)) it spans 100 / sqrt(0.9) = 105.4 px.
    image = np.zeros((256, 256, 3), np.uint8)
    half = round(100 * 256 / 224 / 2)
    image[128 - half : 128 + half, 128 - half : 128 + half] = 255
    uncropped = libero_image(image, center_crop=False, backend=backend)[112, :, 0] > 127
    cropped = libero_image(image, center_crop=True, backend=backend)[112, :, 0] > 127
    assert abs(uncropped.sum() - 2 * half * 224 / 256) <= 2
    assert abs(cropped.sum() - uncropped.sum() / np.sqrt(0.9)) <= 2


@pytest.mark.parametrize("center_crop", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_official_tf_pipeline_bit_for_bit(center_crop, seed):
    image = _scene(seed)
    np.testing.assert_array_equal(libero_image(image, center_crop=center_crop), _official_pipeline(image, center_crop))


def test_non_square_renders_are_accepted_and_bad_inputs_rejected(backend):
    assert libero_image(_scene(2)[:, :200], center_crop=True, backend=backend).shape == (224, 224, 3)
    with pytest.raises(ValueError, match="uint8"):
        libero_image(np.zeros((256, 256, 3), np.float32), center_crop=False, backend=backend)
    with pytest.raises(ValueError, match="H, W, 3"):
        libero_image(np.zeros((256, 256), np.uint8), center_crop=False, backend=backend)


@pytest.mark.parametrize(
    ("gripper", "expected"),
    [
        (0.0, 1.0),  # model "close" -> LIBERO +1 (close)
        (1.0, -1.0),  # model "open" -> LIBERO -1 (open)
        (0.996078431372549, -1.0),  # the top bin center the tokenizer can emit
        (0.003921568627451, 1.0),
        (0.49, 1.0),
        (0.51, -1.0),
        (-0.3, 1.0),  # out of range still binarizes by side
        (1.7, -1.0),
        (0.5, 0.0),  # sign(0) = 0, as the reference; 0.5 is never a bin center, so this cannot occur in practice
    ],
)
def test_gripper_truth_table(gripper, expected):
    action = np.array([0.1, -0.2, 0.3, -0.04, 0.05, -0.06, gripper])
    out = libero_action(action)
    assert out[-1] == expected
    np.testing.assert_array_equal(out[:6], action[:6])
    assert out.dtype == np.float64 and out.shape == (7,)


def test_libero_action_copies_and_batches():
    actions = np.array([[0.0] * 6 + [0.0], [0.5] * 6 + [1.0]], dtype=np.float32)
    before = actions.copy()
    out = libero_action(actions)
    np.testing.assert_array_equal(out[:, -1], [1.0, -1.0])
    np.testing.assert_array_equal(actions, before)
    with pytest.raises(ValueError, match="7 dims"):
        libero_action(np.zeros(6))


def test_resolve_suite_unnorm_key():
    stats = {"libero_spatial": {}, "libero_goal_no_noops": {}, "bridge_orig": {}}
    assert resolve_suite_unnorm_key(stats, "libero_spatial") == "libero_spatial"
    assert resolve_suite_unnorm_key(stats, "libero_goal") == "libero_goal_no_noops"
    assert resolve_suite_unnorm_key({**stats, "libero_goal": {}}, "libero_goal") == "libero_goal"
    with pytest.raises(KeyError, match="bridge_orig"):
        resolve_suite_unnorm_key(stats, "libero_10")


@pytest.mark.parametrize("center_crop", [False, True])
def test_numpy_backend_is_close_to_the_official_tf_pipeline(center_crop):
    # Measured on these scenes: resize and crop agree to 1 grey level; the JPEG decoders differ (TF: fast integer
    # IDCT, Pillow: accurate), max ~5-14, mean ~1 grey level (see vla.image_ops).
    for seed in (0, 1):
        image = _scene(seed)
        error = np.abs(
            libero_image(image, center_crop=center_crop, backend="numpy").astype(int)
            - _official_pipeline(image, center_crop)
        )
        assert error.mean() < 1.5 and error.max() <= 16, (error.mean(), error.max())


def test_numpy_backend_runs_where_tensorflow_cannot_be_imported():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"  # `import tensorflow` now raises ImportError
        "import numpy as np\n"
        "from vla import image_ops, libero_image\n"
        "assert image_ops.default_backend() == 'numpy'\n"
        "out = libero_image(np.full((256, 256, 3), 77, np.uint8), center_crop=True)\n"
        "assert out.shape == (224, 224, 3) and (out == 77).all(), out\n"
        "assert sys.modules['tensorflow'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("center_crop", [False, True])
def test_images_prepared_in_a_worker_are_the_hosts_numpy_images(center_crop, monkeypatch):
    """`WorkerImages` (run by the simulation workers) replaces the raw render by the model image and the video frame;
    `policy_images` then takes them as they are, and they equal what the host computes from the raw render with the
    numpy back-end. A batch may mix prepared and raw observations."""
    from vla import image_ops

    monkeypatch.setattr(image_ops, "default_backend", lambda: "numpy")
    raw = {slot: _scene(seed=slot) for slot in (0, 1, 2)}
    prepared = {s: WorkerImages(center_crop)({"agentview_image": raw[s].copy(), "x": np.ones(3)}) for s in (0, 2)}
    assert all(sorted(obs) == [POLICY_FRAME, POLICY_IMAGE, "x"] for obs in prepared.values())  # no raw render sent
    host_frames, mixed_frames = {}, {}
    host = policy_images({s: {"agentview_image": raw[s]} for s in raw}, [0, 1, 2], center_crop=center_crop,
                         last_frames=host_frames)  # fmt: skip
    mixed = policy_images({**prepared, 1: {"agentview_image": raw[1]}}, [0, 1, 2], center_crop=center_crop,
                          last_frames=mixed_frames)  # fmt: skip
    for slot in raw:
        np.testing.assert_array_equal(mixed[slot], host[slot])
        np.testing.assert_array_equal(mixed_frames[slot], host_frames[slot])
        np.testing.assert_array_equal(host_frames[slot], libero_image(raw[slot], center_crop=False, backend="numpy"))
    assert (host[0] != host_frames[0]).any() == center_crop
    # without video frames (an evaluation that saves no videos) only the model image crosses the pipe
    lean = {s: WorkerImages(center_crop, video_frames=False)({"agentview_image": raw[s].copy()}) for s in (0, 2)}
    assert all(sorted(obs) == [POLICY_IMAGE] for obs in lean.values())
    lean_frames = {0: host_frames[0]}  # a frame left from an earlier step is dropped, not kept stale
    images = policy_images(lean, [0, 2], center_crop=center_crop, last_frames=lean_frames)
    np.testing.assert_array_equal(images[1], host[2])
    assert lean_frames == {}


def test_worker_images_by_default_only_where_the_host_would_use_the_same_ops(monkeypatch):
    from vla import image_ops

    for backend, expected in (("numpy", True), ("tf", False)):
        monkeypatch.setattr(image_ops, "default_backend", lambda b=backend: b)
        assert (worker_images(True) is not None) == expected
        assert worker_images(True, enabled=True) == WorkerImages(True) and worker_images(True, enabled=False) is None
    with pytest.raises(KeyError, match="agentview"):
        WorkerImages(False)({"robot0_eye_in_hand_image": np.zeros((8, 8, 3), np.uint8)})

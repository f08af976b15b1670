"""Dataset specs: the gripper conventions and the Bridge relabeling, YAML specs (built-in and the user's), the
features.json check, and reading LIBERO-, Bridge- and RT-1-like RLDS datasets through their specs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vla.data import DataConfig, check_data
from vla.dataset_specs import DatasetSpec, builtin_specs, check_spec, dataset_spec, load_spec_files
from vla.dataset_transforms import gripper_binarize, gripper_invert, gripper_relative, standardize_episode

LLAMA2_DIR = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "llama2"
BRIDGE_GRIPPER = [0.0, 1.0, 0.5, 0.02, 0.6, 0.99, 0.3]  # the first step is dropped, the rest binarized
BRIDGE_EXPECTED = [1.0, 0.0, 0.0, 1.0, 1.0]  # steps 1..5 (the last step is dropped by the relabeling)
RT1_GRIPPER = [0.0, 1.0, 0.0, -1.0, 0.0]  # keep, close, keep, open, keep
RT1_EXPECTED = [1.0, 0.0, 0.0, 1.0, 1.0]  # starts open: the first command closes


def test_gripper_conventions():
    np.testing.assert_allclose(gripper_invert([-1.0, 1.0, 0.3]), [1.0, 0.0, 0.7], rtol=1e-6)
    # in-between values take the value after them; an episode ending in between keeps its raw last value
    np.testing.assert_allclose(gripper_binarize(BRIDGE_GRIPPER[1:]), [1.0, 0.0, 0.0, 1.0, 1.0, 0.3])
    np.testing.assert_array_equal(gripper_relative(RT1_GRIPPER), RT1_EXPECTED)
    np.testing.assert_array_equal(gripper_relative([0.0, -0.5, 0.05]), [0.0, 1.0, 1.0])  # first command opens
    np.testing.assert_array_equal(gripper_relative([0.0, 0.05]), [1.0, 1.0])  # no command: open


def test_standardize_episode_bridge_order():
    state = np.cumsum(np.arange(35, dtype=np.float32).reshape(7, 5) ** 2 / 100, axis=0)
    state = np.concatenate([state, state[:, :2]], axis=1)  # (7, 7)
    action = np.concatenate([np.ones((7, 6)), np.array(BRIDGE_GRIPPER)[:, None]], axis=1)
    actions, steps = standardize_episode([action], state, gripper="binarize", skip_first_steps=1,
                                         transform="relabel_from_state")  # fmt: skip
    np.testing.assert_array_equal(steps, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(actions[:, :6], state[2:7, :6] - state[1:6, :6], rtol=1e-6)
    np.testing.assert_array_equal(actions[:, 6], BRIDGE_EXPECTED)


def test_builtin_specs_follow_the_official_configs():
    specs = builtin_specs()
    for suite in ("spatial", "object", "goal", "10"):
        spec = specs[f"libero_{suite}_no_noops"]
        assert (spec.image_key, spec.gripper, spec.action) == ("image", "invert", ("action",))
    bridge, rt1 = specs["bridge_orig"], specs["fractal20220817_data"]
    assert (bridge.image_key, bridge.gripper, bridge.skip_first_steps, bridge.transform) == (
        "image_0", "binarize", 1, "relabel_from_state")  # fmt: skip
    assert (rt1.image_key, rt1.gripper, rt1.language_key) == (
        "image",
        "relative",
        "observation/natural_language_instruction",
    )
    assert all(s.normalize_mask == (True,) * 6 + (False,) for s in specs.values())


def test_spec_file_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("my_robot:\n  camera: image_1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*my_robot.*camera"):
        load_spec_files(bad)
    bad.write_text("my_robot:\n  gripper: sideways\n")
    with pytest.raises(ValueError, match=r"my_robot.*bad\.yaml.*sideways"):
        load_spec_files(bad)
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_spec_files(tmp_path / "nothere.yaml")
    with pytest.raises(ValueError, match="data.image_key"):  # a spec'd dataset ignores no override silently
        dataset_spec(DataConfig(dataset_name="bridge_orig", image_key="wrist"))


@pytest.fixture(scope="module")
def oxe_root(tmp_path_factory):
    pytest.importorskip("tensorflow_datasets")
    from rlds_schemas import bridge_like_episodes, fractal_like_episodes, write_bridge_like, write_fractal_like

    root = tmp_path_factory.mktemp("oxe")
    bridge = bridge_like_episodes(4, steps=7)
    for episode in bridge:
        episode["action"][:, 6] = BRIDGE_GRIPPER
    rt1 = fractal_like_episodes(3, steps=5)
    for episode in rt1:
        episode["gripper_closedness_action"][:, 0] = RT1_GRIPPER
    write_bridge_like(bridge, root)
    write_bridge_like(bridge, root, name="my_robot")
    write_fractal_like(rt1, root)
    return root, bridge, rt1


def _all_frames(cfg: DataConfig) -> tuple[list[dict], dict]:
    from vla.processor import ImageProcessor
    from vla.rlds import RLDSDataset

    dataset = RLDSDataset(cfg, None, ImageProcessor(), rank=0, world_size=1)
    frames = dataset.frames()
    return [next(frames) for _ in range(dataset.num_frames)], dataset.dataset_statistics[cfg.dataset_name]


def _episode(frame) -> int:
    return int(frame["instruction"].split()[-1])


def test_bridge_like_dataset_reads_through_the_builtin_spec(oxe_root):
    from rlds_schemas import colour

    from vla.normalization import normalize_actions

    root, episodes, _ = oxe_root
    cfg = DataConfig(data_root_dir=root, dataset_name="bridge_orig", shuffle_buffer_size=1)
    check_data(cfg)
    frames, stats = _all_frames(cfg)
    assert len(frames) == 4 * 5 and stats["num_transitions"] == 20 and stats["num_trajectories"] == 4
    expected_all = []
    for e, episode in enumerate(episodes):
        mine = [f for f in frames if _episode(f) == e]
        state = episode["state"]
        expected = np.concatenate([state[2:7, :6] - state[1:6, :6], np.array(BRIDGE_EXPECTED)[:, None]], axis=1)
        expected_all.append(expected)
        assert len(mine) == 5 and all(f["instruction"] == f"bridge task {e}" for f in mine)
        for t, frame in enumerate(mine):  # storage order within an episode; kept step t + 1
            np.testing.assert_allclose(frame["action"], normalize_actions(expected[t], stats["action"]), atol=1e-5)
            assert frame["image"].shape == (224, 224, 3)
            assert np.abs(frame["image"].astype(int).mean((0, 1)) - colour(e, t + 1, 0)[0, 0]).max() < 3  # image_0
    raw = np.concatenate(expected_all)
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(raw, 0.99, axis=0), rtol=1e-5, atol=1e-6)
    assert stats["action"]["mask"] == [True] * 6 + [False]


def test_fractal_like_dataset_reads_through_the_builtin_spec(oxe_root):
    root, _, episodes = oxe_root
    cfg = DataConfig(data_root_dir=root, dataset_name="fractal20220817_data", shuffle_buffer_size=1)
    check_data(cfg)
    frames, stats = _all_frames(cfg)
    assert len(frames) == 15
    for e, episode in enumerate(episodes):
        mine = [f for f in frames if _episode(f) == e]
        raw = np.concatenate([episode["world_vector"], episode["rotation_delta"]], axis=1)
        assert [f["instruction"] for f in mine] == [f"rt1 task {e}"] * 5
        np.testing.assert_array_equal([f["action"][6] for f in mine], RT1_EXPECTED)  # the gripper is not normalized
        q01, q99 = np.array(stats["action"]["q01"][:6]), np.array(stats["action"]["q99"][:6])
        back = (np.array([f["action"][:6] for f in mine]) + 1) / 2 * (q99 - q01) + q01
        inside = (raw > q01) & (raw < q99)  # clipped outside the 1 / 99 percentiles
        np.testing.assert_allclose(back[inside], raw[inside], atol=1e-5)


def test_a_user_spec_file_adds_a_dataset(oxe_root, tmp_path):
    from rlds_schemas import colour

    root, episodes, _ = oxe_root
    spec_file = tmp_path / "my_robot.yaml"
    spec_file.write_text("my_robot:\n  image_key: image_1\n  action: [action]\n  gripper: absolute\n"
                         "  normalize_mask: [true, true, true, true, true, true, true]\n")  # fmt: skip
    cfg = DataConfig(data_root_dir=root, dataset_name="my_robot", spec_file=spec_file, shuffle_buffer_size=1)
    check_data(cfg)
    assert dataset_spec(cfg).source == str(spec_file)
    frames, stats = _all_frames(cfg)
    assert len(frames) == 4 * 7 and stats["action"]["mask"] == [True] * 7
    first = next(f for f in frames if _episode(f) == 2)
    assert np.abs(first["image"].astype(int).mean((0, 1)) - colour(2, 0, 1)[0, 0]).max() < 3  # image_1, step 0


@pytest.mark.parametrize(
    "spec, key",
    [
        ("image_key: image_2", "image_2"),  # no such camera
        ("image_key: state", "state"),  # not an image
        ('action: ["action[0:6]"]', "6 dims"),  # wrong width
        ('action: ["action[0:6]", "action[9]"]', "action[9"),  # outside the stored dims
        ("language_key: instruction", "instruction"),
        ("transform: relabel_from_state\n  state_key: observation/nostate", "observation/nostate"),
    ],
)
def test_missing_keys_and_wrong_shapes_are_one_error_before_any_data_is_read(oxe_root, tmp_path, spec, key):
    root, _, _ = oxe_root
    spec_file = tmp_path / "specs.yaml"
    spec_file.write_text(f"bridge_orig:\n  image_key: image_0\n  {spec}\n")
    with pytest.raises(ValueError) as info:
        check_data(DataConfig(data_root_dir=root, dataset_name="bridge_orig", spec_file=spec_file))
    message = str(info.value)
    assert "'bridge_orig'" in message and key in message and str(spec_file) in message, message
    assert info.value.__cause__ is None


def test_check_data_with_specs_needs_no_tensorflow(oxe_root):
    root, _, _ = oxe_root
    code = ("import sys\nfrom vla.data import DataConfig, check_data\n"
            f"check_data(DataConfig(data_root_dir={str(root)!r}, mix='[[bridge_orig, 1.0], [fractal20220817_data, 2]]'))\n"
            "assert 'tensorflow' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_libero_builtin_spec_matches_the_layout_without_a_spec(tiny_rlds_dataset):
    dataset_dir, _ = tiny_rlds_dataset
    spec = dataset_spec(DataConfig(dataset_name="libero_goal_no_noops"))
    plain = dataset_spec(DataConfig(dataset_name="tiny_libero"))
    assert spec.source.endswith("libero.yaml") and plain.source.startswith("no spec")
    assert spec.fingerprint().replace("libero_goal_no_noops", "x") == plain.fingerprint().replace("tiny_libero", "x")
    check_spec(DatasetSpec(name="tiny_libero"), dataset_dir)  # the default spec fits the LIBERO layout


def test_finetune_official_flags_train_on_a_bridge_like_folder(oxe_root, tmp_path):
    """The official command line `finetune.py --dataset_name bridge_orig --data_root_dir ...` reads a Bridge-layout
    RLDS folder through the built-in spec and saves its statistics under `bridge_orig`."""
    import json

    from scripts_loader import load_script

    repo = Path(__file__).resolve().parents[1]
    script = load_script("finetune")
    root, episodes, _ = oxe_root
    args = ["--config", str(repo / "configs" / "tiny.yaml"), "--model.tokenizer_path", str(LLAMA2_DIR),
            "--dataset_name", "bridge_orig", "--data_root_dir", str(root), "--run_root_dir", str(tmp_path),
            "--max_steps", "2", "--save_steps", "2", "--shuffle_buffer_size", "4"]  # fmt: skip
    run_dir = script.main(script.parse(args))
    saved = json.loads((run_dir / "dataset_statistics.json").read_text())
    assert list(saved) == ["bridge_orig"]
    assert saved["bridge_orig"]["num_trajectories"] == len(episodes)

import json

import numpy as np
import pytest

from vla import (
    compute_action_stats,
    dataset_statistics,
    load_dataset_statistics,
    normalize_actions,
    resolve_unnorm_key,
    save_dataset_statistics,
    unnormalize_actions,
)
from vla.normalization import LIBERO_ACTION_MASK

# Reference §2: libero_spatial statistics of the official checkpoint.
SPATIAL = {
    "q01": [-0.745473, -0.661607, -0.9375, -0.107143, -0.206786, -0.184286, 0.0],
    "q99": [0.9375, 0.875893, 0.932143, 0.103929, 0.176786, 0.145714, 1.0],
    "mask": list(LIBERO_ACTION_MASK),
}


def _actions(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    actions = rng.normal(0, 0.4, (n, 7)).astype(np.float32)
    actions[:, 6] = rng.integers(0, 2, n)
    return actions


def test_stats_match_numpy():
    actions = _actions()
    stats = compute_action_stats(actions, LIBERO_ACTION_MASK)
    np.testing.assert_allclose(stats["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["q99"], np.quantile(actions, 0.99, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], actions.std(0), rtol=1e-6)
    assert stats["mask"] == list(LIBERO_ACTION_MASK)
    assert set(stats) == {"mean", "std", "max", "min", "q01", "q99", "mask"}


def test_reference_test_vector_unnormalizes():
    # Token 31872 (normalized 0.0) seven times with the libero_spatial stats (openvla#346).
    out = unnormalize_actions(np.zeros(7), SPATIAL)
    np.testing.assert_allclose(out, [0.0960, 0.1071, -0.0027, -0.0016, -0.0150, -0.0193, 0.0], atol=6e-5)
    assert out.dtype == np.float64


def test_normalize_formula_and_clipping():
    stats = compute_action_stats(_actions(), LIBERO_ACTION_MASK)
    raw = np.array([[stats["q01"][0], stats["q99"][1], 100.0, -100.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    out = normalize_actions(raw, stats)[0]
    assert out[0] == pytest.approx(-1.0, abs=1e-6) and out[1] == pytest.approx(1.0, abs=1e-6)
    assert out[2] == 1.0 and out[3] == -1.0
    q01, q99 = stats["q01"][4], stats["q99"][4]
    assert out[4] == pytest.approx(2 * (0.0 - q01) / (q99 - q01 + 1e-8) - 1, rel=1e-5)
    assert out[6] == 1.0  # gripper is masked: passes through


def test_round_trip_inside_bounds():
    actions = _actions()
    stats = compute_action_stats(actions, LIBERO_ACTION_MASK)
    inside = np.clip(actions, stats["q01"], stats["q99"])
    np.testing.assert_allclose(unnormalize_actions(normalize_actions(inside, stats), stats), inside, atol=1e-5)


def test_constant_dim_normalizes_to_zero():
    actions = _actions()
    actions[:, 2] = 0.25
    stats = compute_action_stats(actions, LIBERO_ACTION_MASK)
    assert (normalize_actions(actions, stats)[:, 2] == 0.0).all()


def test_missing_mask_means_all_dims():
    stats = {k: v for k, v in SPATIAL.items() if k != "mask"}
    assert unnormalize_actions(np.full(7, -1.0), stats)[6] == 0.0  # q01 of the gripper
    assert unnormalize_actions(np.full(7, -1.0), SPATIAL)[6] == -1.0  # masked: unchanged


def test_json_round_trip(tmp_path):
    entry = dataset_statistics(_actions(), num_trajectories=12)
    assert entry["num_transitions"] == 2000 and entry["num_trajectories"] == 12
    assert entry["proprio"]["q99"] == [0.0] * 7
    path = tmp_path / "dataset_statistics.json"
    save_dataset_statistics(path, {"libero_spatial_no_noops": entry})
    assert load_dataset_statistics(path) == json.loads(json.dumps({"libero_spatial_no_noops": entry}))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "openvla", "norm_stats": {"a": entry, "b": entry}}))
    assert sorted(load_dataset_statistics(config)) == ["a", "b"]


def test_unnorm_key_resolution():
    stats = {"libero_spatial": {}, "bridge_orig": {}}
    assert resolve_unnorm_key({"only": {}}, None) == "only"
    assert resolve_unnorm_key(stats, "bridge_orig") == "bridge_orig"
    with pytest.raises(ValueError, match="bridge_orig"):
        resolve_unnorm_key(stats, None)
    with pytest.raises(KeyError, match="available keys.*bridge_orig.*libero_spatial"):
        resolve_unnorm_key(stats, "libero_goal")


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        compute_action_stats(np.zeros(7))
    with pytest.raises(ValueError, match="mask"):
        compute_action_stats(np.zeros((3, 7)), [True] * 6)
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_dataset_statistics(tmp_path / "nothing.json")

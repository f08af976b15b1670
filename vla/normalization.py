"""Action statistics and OpenVLA's BOUNDS_Q99 normalization; `dataset_statistics.json` and `norm_stats` I/O."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vla.files import atomic_write_text

# Official LIBERO recipe: the 6 end-effector deltas are normalized, the gripper (already {0, 1}) is not.
LIBERO_ACTION_MASK = (True,) * 6 + (False,)
_EPS = 1e-8  # added to (q99 - q01) at train time only, as the reference does


def compute_action_stats(actions: np.ndarray, mask: np.ndarray | list[bool] | None = None) -> dict[str, list]:
    """The `"action"` block of `dataset_statistics.json` for actions (N, D).

    Population std, numpy's default (linear) quantiles, computed in float32 like the reference pipeline.
    `mask` marks the dims that get normalized (default: all).
    """
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2 or actions.shape[0] == 0:
        raise ValueError(f"actions must be a non-empty (N, D) array, got shape {actions.shape}")
    mask = np.ones(actions.shape[1], bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != (actions.shape[1],):
        raise ValueError(f"mask has shape {mask.shape}, expected ({actions.shape[1]},) to match the action dim")
    return {
        "mean": actions.mean(0).tolist(),
        "std": actions.std(0).tolist(),
        "max": actions.max(0).tolist(),
        "min": actions.min(0).tolist(),
        "q01": np.quantile(actions, 0.01, axis=0).tolist(),
        "q99": np.quantile(actions, 0.99, axis=0).tolist(),
        "mask": mask.tolist(),
    }


def dataset_statistics(actions: np.ndarray, num_trajectories: int, mask=LIBERO_ACTION_MASK) -> dict[str, Any]:
    """One dataset's entry of `dataset_statistics.json`: action stats, all-zero proprio stats (OpenVLA loads no
    proprio and computes them on zeros), transition and trajectory counts."""
    actions = np.asarray(actions, dtype=np.float32)
    proprio = compute_action_stats(np.zeros_like(actions))
    proprio.pop("mask")
    return {
        "action": compute_action_stats(actions, mask),
        "proprio": proprio,
        "num_transitions": int(actions.shape[0]),
        "num_trajectories": int(num_trajectories),
    }


def _bounds(stats: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = [k for k in ("q01", "q99") if k not in stats]
    if missing:
        raise KeyError(f"action statistics lack {missing}; pass the 'action' block of dataset_statistics.json")
    q01 = np.asarray(stats["q01"], dtype=np.float64)
    q99 = np.asarray(stats["q99"], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    return q01, q99, mask


def normalize_actions(actions: np.ndarray, stats: dict) -> np.ndarray:
    """Raw actions (..., D) -> [-1, 1] by q01/q99 on masked dims (clipped); unmasked dims pass through; dims whose
    min == max become 0. Returns float32."""
    q01, q99, mask = _bounds(stats)
    actions = np.asarray(actions, dtype=np.float32)
    scaled = np.clip(2.0 * (actions - q01) / (q99 - q01 + _EPS) - 1.0, -1.0, 1.0)
    out = np.where(mask, scaled, actions)
    if "min" in stats and "max" in stats:
        out = np.where(np.asarray(stats["min"]) == np.asarray(stats["max"]), 0.0, out)
    return out.astype(np.float32)


def unnormalize_actions(actions: np.ndarray, stats: dict) -> np.ndarray:
    """[-1, 1] actions (..., D) -> raw units on masked dims (no epsilon, as at inference); float64."""
    q01, q99, mask = _bounds(stats)
    actions = np.asarray(actions, dtype=np.float64)
    return np.where(mask, 0.5 * (actions + 1.0) * (q99 - q01) + q01, actions)


def resolve_unnorm_key(norm_stats: dict[str, Any], unnorm_key: str | None) -> str:
    """Pick the dataset whose statistics un-normalize actions; `None` is allowed only when exactly one exists."""
    available = sorted(norm_stats)
    if unnorm_key is None:
        if len(available) != 1:
            raise ValueError(
                f"this checkpoint holds statistics for {len(available)} datasets; pass unnorm_key= one of {available}"
            )
        return available[0]
    if unnorm_key not in norm_stats:
        raise KeyError(f"unnorm_key {unnorm_key!r} not found; available keys: {available}")
    return unnorm_key


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temp file + rename, so a crash never leaves a half-written file."""
    atomic_write_text(Path(path), json.dumps(_to_jsonable(obj), indent=2))


def save_dataset_statistics(path: str | Path, statistics: dict[str, dict]) -> None:
    """Write `{dataset_name: {"action": ..., "proprio": ..., ...}}` as `dataset_statistics.json`."""
    write_json_atomic(Path(path), statistics)


def load_dataset_statistics(path: str | Path) -> dict[str, dict]:
    """Read `dataset_statistics.json` (or a config.json's `norm_stats` block when given a config.json)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dataset statistics at {path}")
    data = json.loads(path.read_text())
    if path.name == "config.json":
        if "norm_stats" not in data:
            raise KeyError(f"{path} has no 'norm_stats' block")
        data = data["norm_stats"]
    for name, block in data.items():
        if not isinstance(block, dict) or "action" not in block:
            raise ValueError(f"{path}: entry {name!r} has no 'action' statistics; is this a dataset_statistics.json?")
    return data

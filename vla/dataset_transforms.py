"""Per-episode action standardization: raw stored fields -> OpenVLA's 7-d action (xyz delta, rpy delta, gripper with
1 = open and 0 = close), the way the Open X-Embodiment conversions do it. Pure numpy, so the same code serves the
tf.data stream (through `tf.numpy_function`), the statistics pass and the tests.

A `vla.dataset_specs.DatasetSpec` names the pieces; `standardize_episode` applies them in a fixed order:
1. concatenate the spec's action parts into a (T, 7) array;
2. drop the first `skip_first_steps` steps (Bridge: the first action of every demo is all zeros);
3. convert the gripper (last) dim with the spec's `gripper` convention (`GRIPPER_FNS`);
4. apply the optional episode transform (`EPISODE_TRANSFORMS`, or "package.module:function" for user code), which may
   rewrite actions from the state and drop steps.
It returns the actions and, for every kept action, the index of its step in the stored episode (the frame whose
image and instruction go with it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np


def gripper_absolute(g: np.ndarray) -> np.ndarray:
    """Already the OpenVLA convention (1 = open, 0 = close): unchanged."""
    return np.asarray(g, np.float32)


def gripper_invert(g: np.ndarray) -> np.ndarray:
    """LIBERO: raw -1 = open, +1 = close -> clip to [0, 1] -> 1 - g, so 1 = open, 0 = close."""
    return 1.0 - np.clip(np.asarray(g, np.float32), 0.0, 1.0)


def gripper_binarize(g: np.ndarray) -> np.ndarray:
    """A continuous gripper command in [0, 1] (1 = open) -> {0, 1}: above 0.95 is open, below 0.05 closed; a value in
    between takes the value of the step after it (the state it is moving to), scanning from the end; an episode that
    ends in between keeps its raw last value there."""
    g = np.asarray(g, np.float32)
    out = np.empty_like(g)
    carry = g[-1] if len(g) else np.float32(0)
    for t in range(len(g) - 1, -1, -1):
        if g[t] > 0.95:
            carry = np.float32(1.0)
        elif g[t] < 0.05:
            carry = np.float32(0.0)
        out[t] = carry
    return out


def gripper_relative(g: np.ndarray) -> np.ndarray:
    """A relative gripper command (< -0.1 opens, > 0.1 closes, otherwise no change) -> the absolute gripper in {0, 1}
    with 1 = open. Before the first command the gripper is taken to be in the opposite state of that command (open
    when there is no command at all)."""
    g = np.asarray(g, np.float32)
    command = np.where(g < -0.1, 1, np.where(g > 0.1, -1, 0))  # +1 open, -1 close, 0 keep
    nonzero = np.flatnonzero(command)
    state = -command[nonzero[0]] if len(nonzero) else 1
    out = np.empty(len(g), np.float32)
    for t, c in enumerate(command):
        state = c if c != 0 else state
        out[t] = state
    return out / 2.0 + 0.5


GRIPPER_FNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "absolute": gripper_absolute,
    "invert": gripper_invert,
    "binarize": gripper_binarize,
    "relative": gripper_relative,
}

# An episode transform: (actions (T, 7) float32, state (T, S) or None) -> (actions (N, 7), kept step indices (N,)).
EpisodeTransform = Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]]


def relabel_from_state(actions: np.ndarray, state: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Bridge: the 6 movement dims become the end-effector motion actually reached, `state[t + 1, :6] - state[t, :6]`;
    the last step has no successor and is dropped. The gripper dim is kept."""
    if state is None:
        raise ValueError("relabel_from_state needs the spec's state_key")
    if len(actions) < 2:
        return np.zeros((0, actions.shape[1]), np.float32), np.zeros(0, np.int64)
    movement = state[1:, :6] - state[:-1, :6]
    relabeled = np.concatenate([movement, actions[:-1, 6:]], axis=1).astype(np.float32)
    return relabeled, np.arange(len(actions) - 1, dtype=np.int64)


EPISODE_TRANSFORMS: dict[str, tuple[EpisodeTransform, bool]] = {  # name -> (function, needs the state)
    "relabel_from_state": (relabel_from_state, True),
}


def episode_transform(name: str) -> tuple[EpisodeTransform, bool]:
    """A built-in transform by name, or user code as "package.module:function" (its `needs_state` attribute, default
    False, says whether it reads the state)."""
    if name in EPISODE_TRANSFORMS:
        return EPISODE_TRANSFORMS[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise KeyError(f"no episode transform {name!r}: built-ins are {sorted(EPISODE_TRANSFORMS)}, or give "
                       "'package.module:function'")  # fmt: skip
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise KeyError(f"cannot import episode transform {name!r}: {err}") from None
    return fn, bool(getattr(fn, "needs_state", False))


def standardize_episode(
    parts: list[np.ndarray], state: np.ndarray | None, *, gripper: str, skip_first_steps: int = 0,
    transform: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(actions (N, 7) float32, step indices (N,) int64) of one episode; see the module docstring for the order."""
    columns = [np.asarray(p, np.float32).reshape(len(p), -1) for p in parts]
    actions = np.concatenate(columns, axis=1)
    steps = np.arange(len(actions), dtype=np.int64)[skip_first_steps:]
    actions = actions[skip_first_steps:].copy()
    state = None if state is None else np.asarray(state, np.float32)[skip_first_steps:]
    if len(actions):
        actions[:, -1] = GRIPPER_FNS[gripper](actions[:, -1])
    if transform is not None:
        fn, _ = episode_transform(transform)
        actions, kept = fn(actions, state)
        steps = steps[np.asarray(kept, np.int64)]
    return np.asarray(actions, np.float32), steps

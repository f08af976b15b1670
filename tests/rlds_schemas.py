"""Tiny RLDS datasets in Open X-Embodiment schemas (other keys and camera names than LIBERO's), written with
`vla.rlds_io.write_rlds_examples`. Each step's images are flat colours that encode (episode, step, camera), so a test
can tell which frame and which camera it got back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 64  # small cameras: the reader resizes to the model's size anyway


def colour(episode: int, step: int, camera: int) -> np.ndarray:
    """A flat (SIZE, SIZE, 3) image whose colour encodes the frame (JPEG keeps flat colours within a grey level)."""
    return np.full((SIZE, SIZE, 3), (20 + 30 * camera, 10 + 20 * episode, 10 + 12 * step), np.uint8)


def bridge_like_episodes(num_episodes: int, steps: int, seed: int = 0) -> list[dict]:
    """Bridge V2-like episodes: cameras image_0 / image_1, state (7,) = xyz, rpy, gripper, action (7,) with a
    continuous gripper command in [0, 1] (1 = open), the first action all zeros."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(num_episodes):
        state = np.cumsum(rng.normal(0, 0.02, (steps, 7)), axis=0).astype(np.float32)
        action = np.concatenate([rng.normal(0, 0.5, (steps, 6)), rng.uniform(0, 1, (steps, 1))], 1).astype(np.float32)
        action[0] = 0.0
        episodes.append({
            "image_0": np.stack([colour(e, t, 0) for t in range(steps)]),
            "image_1": np.stack([colour(e, t, 1) for t in range(steps)]),
            "state": state, "action": action, "language_instruction": f"bridge task {e}",
        })  # fmt: skip
    return episodes


def write_bridge_like(episodes: list[dict], root: Path, name: str = "bridge_orig") -> Path:
    import tensorflow_datasets as tfds

    from vla.rlds_io import write_rlds_examples

    f = tfds.features
    image = {"shape": (SIZE, SIZE, 3), "dtype": np.uint8, "encoding_format": "jpeg"}
    features = f.FeaturesDict({
        "steps": f.Dataset({
            "observation": f.FeaturesDict({"image_0": f.Image(**image), "image_1": f.Image(**image),
                                           "state": f.Tensor(shape=(7,), dtype=np.float32)}),
            "action": f.Tensor(shape=(7,), dtype=np.float32),
            "language_instruction": f.Text(),
            "is_first": f.Scalar(dtype=np.bool_),
        }),
    })  # fmt: skip
    examples = (
        {"steps": {"observation": {k: ep[k] for k in ("image_0", "image_1", "state")}, "action": ep["action"],
                   "language_instruction": [ep["language_instruction"]] * len(ep["action"]),
                   "is_first": np.arange(len(ep["action"])) == 0}}
        for ep in episodes
    )  # fmt: skip
    return write_rlds_examples(examples, root, name, features)


def fractal_like_episodes(num_episodes: int, steps: int, seed: int = 0) -> list[dict]:
    """RT-1-like episodes: camera `image`, the action a dict (world_vector, rotation_delta, a relative
    gripper_closedness_action (1,)), the instruction under the observation."""
    rng = np.random.default_rng(seed)
    return [
        {"image": np.stack([colour(e, t, 0) for t in range(steps)]),
         "world_vector": rng.normal(0, 0.1, (steps, 3)).astype(np.float32),
         "rotation_delta": rng.normal(0, 0.1, (steps, 3)).astype(np.float32),
         "gripper_closedness_action": rng.choice([-1.0, 0.0, 0.0, 1.0], (steps, 1)).astype(np.float32),
         "natural_language_instruction": f"rt1 task {e}"}
        for e in range(num_episodes)
    ]  # fmt: skip


def write_fractal_like(episodes: list[dict], root: Path, name: str = "fractal20220817_data") -> Path:
    import tensorflow_datasets as tfds

    from vla.rlds_io import write_rlds_examples

    f = tfds.features
    features = f.FeaturesDict({
        "steps": f.Dataset({
            "observation": f.FeaturesDict({
                "image": f.Image(shape=(SIZE, SIZE, 3), dtype=np.uint8, encoding_format="jpeg"),
                "natural_language_instruction": f.Text(),
            }),
            "action": f.FeaturesDict({"world_vector": f.Tensor(shape=(3,), dtype=np.float32),
                                      "rotation_delta": f.Tensor(shape=(3,), dtype=np.float32),
                                      "gripper_closedness_action": f.Tensor(shape=(1,), dtype=np.float32)}),
        }),
    })  # fmt: skip
    examples = (
        {"steps": {"observation": {"image": ep["image"],
                                   "natural_language_instruction": [ep["natural_language_instruction"]] * len(ep["image"])},
                   "action": {k: ep[k] for k in ("world_vector", "rotation_delta", "gripper_closedness_action")}}}
        for ep in episodes
    )  # fmt: skip
    return write_rlds_examples(examples, root, name, features)

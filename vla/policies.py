"""Policies the LIBERO eval harness can run: the VLA (OpenVLA's image/action contract), the scripted expert and a
random baseline. One `act` call per env step covers every running env ("slot"), so the VLA decodes one batch."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from vla import image_ops
from vla.libero_env import TaskInfo
from vla.libero_io import libero_action, libero_image

Observation = dict[str, np.ndarray]  # raw LIBERO observations of one env (images upside down)


class Policy(Protocol):
    """`reset(slot, task)` before each episode in `slot`; `act` maps the observations of the running slots to LIBERO
    actions (7,) (xyz, rpy deltas in [-1, 1], gripper -1 open / +1 close) in ONE call."""

    needs_images: bool  # False: the harness may turn rendering off (the observations then carry no images)
    last_frames: dict[int, np.ndarray]  # per slot, the (H, W, 3) uint8 image the last action came from (videos)

    def reset(self, slot: int, task: TaskInfo) -> None: ...

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]: ...


class VLAPolicy:
    """A VLA checkpoint through OpenVLA's eval contract: `libero_image` -> `vla.predict_actions` (one batch, actions
    un-normalized with `unnorm_key`) -> `libero_action`. `last_frames` holds the 224² image before the center crop,
    the frame OpenVLA writes to its replay videos."""

    needs_images = True

    def __init__(self, vla: Any, unnorm_key: str, center_crop: bool):
        self.vla, self.unnorm_key, self.center_crop = vla, unnorm_key, center_crop
        self.last_frames: dict[int, np.ndarray] = {}

    def reset(self, slot: int, task: TaskInfo) -> None:
        self.last_frames.pop(slot, None)

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]:
        slots = sorted(observations)
        images = []
        for slot in slots:
            # Same composition as `libero_image(..., center_crop=True)`, keeping the uncropped frame for the video.
            frame = libero_image(observations[slot]["agentview_image"], center_crop=False)
            self.last_frames[slot] = frame
            images.append(image_ops.center_crop(frame) if self.center_crop else frame)
        actions = np.asarray(
            self.vla.predict_actions(images, [instructions[s] for s in slots], unnorm_key=self.unnorm_key)
        )
        if actions.shape != (len(slots), 7):
            raise ValueError(f"predict_actions returned shape {actions.shape}, expected ({len(slots)}, 7)")
        return {slot: libero_action(action) for slot, action in zip(slots, actions, strict=True)}


class ExpertPolicy:
    """`vla.expert.ScriptedExpert` (privileged object poses) per slot, built from the task's BDDL goal at reset."""

    needs_images = False

    def __init__(self, **expert_kwargs: Any):
        self.expert_kwargs = expert_kwargs
        self.experts: dict[int, Any] = {}
        self.last_frames: dict[int, np.ndarray] = {}

    def reset(self, slot: int, task: TaskInfo) -> None:
        from vla.expert import ScriptedExpert

        self.experts[slot] = ScriptedExpert.from_bddl(task.bddl_file, **self.expert_kwargs)

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]:
        return {slot: np.asarray(self.experts[slot].act(obs), dtype=np.float64) for slot, obs in observations.items()}


class RandomPolicy:
    """Uniform random deltas in [-1, 1]^6 and a random gripper command (-1 or +1): the ~0 % baseline."""

    needs_images = False

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.last_frames: dict[int, np.ndarray] = {}

    def reset(self, slot: int, task: TaskInfo) -> None:
        pass

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]:
        return {
            slot: np.append(self.rng.uniform(-1.0, 1.0, 6), self.rng.choice([-1.0, 1.0]))
            for slot in sorted(observations)
        }

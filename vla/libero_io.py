"""The LIBERO eval contract of OpenVLA: raw agentview render -> the model's 224² image, model action
-> LIBERO action (gripper binarized and inverted), and the `unnorm_key` that goes with a suite.

TensorFlow is imported only when `libero_image` runs with the "tf" backend (through `vla.image_ops`), so simulation
workers can import this; the "numpy" backend needs no TensorFlow at all (machines without it).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla import image_ops
from vla.libero_env import upright

IMAGE_SIZE = 224  # the towers' input size; OpenVLA's eval resizes to it before the processor sees the image


def libero_image(agentview: np.ndarray, *, center_crop: bool, backend: str | None = None) -> np.ndarray:
    """Raw `agentview_image` (H, W, 3) uint8 -> (224, 224, 3) uint8, the image exactly as the model's processor
    receives it: rotate 180° -> TF JPEG round trip (as the RLDS builder stored training frames) -> lanczos3
    antialiased resize to 224 -> if `center_crop`, the centered sqrt(0.9)-side crop bilinearly resized back to 224.

    `backend`: "tf" (OpenVLA's TF ops) or "numpy" (TF-free; the JPEG decoder differs by ~1 grey level on average,
    see `vla.image_ops`); default "tf" where TensorFlow is installed, else "numpy".
    """
    backend = backend or image_ops.default_backend()
    agentview = np.asarray(agentview)
    if agentview.ndim != 3 or agentview.shape[-1] != 3 or agentview.dtype != np.uint8:
        raise ValueError(
            f"agentview must be an (H, W, 3) uint8 render, got shape {agentview.shape} dtype {agentview.dtype}"
        )
    # the same 180° rotation the demonstrations were recorded with (LIBERO renders upside down)
    image = image_ops.jpeg_roundtrip(upright(agentview), backend=backend)
    image = image_ops.resize_image(image, IMAGE_SIZE, backend=backend)
    return image_ops.center_crop(image, backend=backend) if center_crop else image


POLICY_IMAGE, POLICY_FRAME = "policy_image", "policy_frame"  # what `WorkerImages` adds to a worker's observation


@dataclass(frozen=True)
class WorkerImages:
    """The VLA's image preparation run inside a simulation worker (an `EnvPool` observation transform): replaces the
    raw `agentview_image` (H, W, 3) by `policy_image`, the model's input (center-cropped if `center_crop`), and, with
    `video_frames`, `policy_frame`, the uncropped 224² `libero_image` (the video frame). The numpy back-end: workers
    never import TensorFlow. So the pixels are the host's own wherever the host would use that back-end too (no
    TensorFlow installed, as on GPU nodes). Without videos only the 150 KB model image crosses the pipe: a message
    larger than the socket's buffer (~208 KB by default) costs the host 4-7x the time to receive
    (docs/PERFORMANCE.md)."""

    center_crop: bool
    video_frames: bool = True

    def __call__(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "agentview_image" not in obs:
            raise KeyError(f"WorkerImages needs the agentview camera rendered; the observation has {sorted(obs)}")
        frame = libero_image(obs.pop("agentview_image"), center_crop=False, backend="numpy")
        obs[POLICY_IMAGE] = image_ops.center_crop(frame, backend="numpy") if self.center_crop else frame
        if self.video_frames:
            obs[POLICY_FRAME] = frame
        return obs


def worker_images(center_crop: bool, enabled: bool | None = None) -> WorkerImages | None:
    """The transform that prepares a VLA's images in the simulation workers, or None to prepare them on the host.
    `enabled` None: where the host's default image back-end is numpy (no TensorFlow), so the pixels stay the same."""
    if enabled is None:
        enabled = image_ops.default_backend() == "numpy"
    return WorkerImages(center_crop) if enabled else None


def policy_images(observations: dict[int, dict[str, np.ndarray]], slots: list[int], *, center_crop: bool,
                  last_frames: dict[int, np.ndarray]) -> list[np.ndarray]:  # fmt: skip
    """The model images of `slots`' observations, in that order, each slot's uncropped 224² frame (the one OpenVLA
    writes to its replay videos) stored in `last_frames[slot]`. Observations a worker already prepared
    (`WorkerImages`) are taken as they are (a slot whose worker sent no video frame gets none); raw ones go through
    `libero_image(agentview, center_crop=...)` here, on a few threads (JPEG coding and resizing release the GIL):
    serially ~10 ms a frame on every step of every env."""

    def prepare(slot: int) -> np.ndarray:
        obs = observations[slot]
        if POLICY_IMAGE in obs:
            if POLICY_FRAME in obs:
                last_frames[slot] = obs[POLICY_FRAME]
            else:
                last_frames.pop(slot, None)
            return obs[POLICY_IMAGE]
        frame = libero_image(obs["agentview_image"], center_crop=False)
        last_frames[slot] = frame  # distinct keys per thread
        return image_ops.center_crop(frame) if center_crop else frame

    raw = sum(POLICY_IMAGE not in observations[s] for s in slots)
    return list(_image_threads().map(prepare, slots)) if raw > 1 else [prepare(s) for s in slots]


@functools.cache
def _image_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="libero-image")


def libero_action(action: np.ndarray) -> np.ndarray:
    """Model action (..., 7), gripper in [0 = close, 1 = open] -> LIBERO action (..., 7) float64 with the gripper
    g -> -sign(2g - 1): -1 opens, +1 closes (OpenVLA's `normalize_gripper_action(binarize=True)` then
    `invert_gripper_action`). Dims 0-5 (end-effector deltas) pass through unchanged."""
    out = np.array(action, dtype=np.float64)  # a copy: the caller's array is never modified
    if out.ndim == 0 or out.shape[-1] != 7:
        raise ValueError(f"action must have 7 dims in its last axis (xyz, rpy, gripper), got shape {out.shape}")
    out[..., -1] = -np.sign(2.0 * out[..., -1] - 1.0)
    return out


def resolve_suite_unnorm_key(norm_stats: dict[str, Any], suite: str) -> str:
    """The statistics to un-normalize a `suite` policy's actions: `suite` (official fine-tunes, e.g. `libero_spatial`)
    or `<suite>_no_noops` (the dataset name our runs train on); anything else is an error listing the keys."""
    for key in (suite, f"{suite}_no_noops"):
        if key in norm_stats:
            return key
    raise KeyError(
        f"no action statistics for suite {suite!r}: looked for {suite!r} and {suite + '_no_noops'!r}, the checkpoint "
        f"has {sorted(norm_stats)}; pass unnorm_key= one of them explicitly"
    )

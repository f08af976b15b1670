"""Synthetic training frames (random images and actions in LIBERO's shapes) with `RLDSDataset`'s interface: for
benchmarks and multi-GPU checks on machines without TensorFlow or a dataset."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from vla.frame_stream import FrameStream
from vla.normalization import dataset_statistics

SYNTHETIC_NAME = "synthetic"  # its key in dataset_statistics.json
INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


class SyntheticDataset(FrameStream):
    """An endless stream of frames, frame `g` a pure function of (`seed`, `g % num_frames`); rank r of w yields global
    frames r, r + w, r + 2w, ... so w ranks at batch b see exactly the frames one process sees at batch w * b.
    Yields `pixel_values (6, S, S) float32`, `input_ids (L,)`, `labels (L,)` int64 like `RLDSDataset`."""

    def __init__(
        self,
        sequence_builder,
        image_processor,
        seed: int = 7,
        rank: int | None = 0,
        world_size: int | None = 1,
        num_frames: int = 256,
        image_size: int = 224,
    ) -> None:
        super().__init__(sequence_builder, image_processor, seed=seed, rank=rank, world_size=world_size)
        self.dataset_name, self.num_frames, self.image_size = SYNTHETIC_NAME, num_frames, image_size
        actions = np.stack([self._action(g) for g in range(num_frames)])
        self.dataset_statistics = {SYNTHETIC_NAME: dataset_statistics(actions, num_trajectories=1)}

    def _action(self, g: int) -> np.ndarray:
        """Normalized action (7,): 6 dims in [-1, 1], the gripper in {0, 1}."""
        rng = np.random.default_rng([self.seed, g, 1])
        return np.append(rng.uniform(-1, 1, 6), rng.integers(0, 2)).astype(np.float32)

    def frames(self) -> Iterator[dict[str, Any]]:
        """Frames before the model's processors: `image (S, S, 3) uint8`, `action (7,)` (already normalized),
        `instruction` (one fixed text). Counts `frames_consumed`."""
        self.frames_consumed = self._start
        while True:
            g = (self.frames_consumed * self.world_size + self.rank) % self.num_frames
            image = np.random.default_rng([self.seed, g, 0]).integers(0, 256, (self.image_size,) * 2 + (3,), np.uint8)
            self.frames_consumed += 1
            yield {"image": image, "action": self._action(g), "instruction": INSTRUCTION}

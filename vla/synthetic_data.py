"""Synthetic training frames (random images and actions in LIBERO's shapes) with `RLDSDataset`'s interface: for
benchmarks and multi-GPU checks on machines without TensorFlow or a dataset."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from vla.normalization import dataset_statistics

SYNTHETIC_NAME = "synthetic"  # its key in dataset_statistics.json
INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


class SyntheticDataset(torch.utils.data.IterableDataset):
    """An endless stream of frames, frame `g` a pure function of (`seed`, `g % num_frames`); rank r of w yields global
    frames r, r + w, r + 2w, ... so w ranks at batch b see exactly the frames one process sees at batch w * b.
    Yields `pixel_values (6, S, S) float32`, `input_ids (L,)`, `labels (L,)` int64 like `RLDSDataset`."""

    def __init__(
        self,
        sequence_builder,
        image_processor,
        seed: int = 7,
        rank: int = 0,
        world_size: int = 1,
        num_frames: int = 256,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        self.sequence_builder, self.image_processor = sequence_builder, image_processor
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_frames, self.image_size = num_frames, image_size
        actions = np.stack([self._action(g) for g in range(num_frames)])
        self.dataset_statistics = {SYNTHETIC_NAME: dataset_statistics(actions, num_trajectories=1)}
        self.frames_consumed = 0

    def _action(self, g: int) -> np.ndarray:
        """Normalized action (7,): 6 dims in [-1, 1], the gripper in {0, 1}."""
        rng = np.random.default_rng([self.seed, g, 1])
        return np.append(rng.uniform(-1, 1, 6), rng.integers(0, 2)).astype(np.float32)

    def state_dict(self) -> dict[str, int]:
        return {"frames_consumed": self.frames_consumed, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["seed"], state["world_size"]) != (self.seed, self.world_size):
            raise ValueError(f"cannot resume a stream made with {state} as seed={self.seed}, world={self.world_size}")
        self.frames_consumed = int(state["frames_consumed"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            g = (self.frames_consumed * self.world_size + self.rank) % self.num_frames
            image = np.random.default_rng([self.seed, g, 0]).integers(0, 256, (self.image_size,) * 2 + (3,), np.uint8)
            input_ids, labels = self.sequence_builder.training_sample(INSTRUCTION, self._action(g))
            self.frames_consumed += 1
            yield {
                "pixel_values": self.image_processor(image)[0],  # (6, S, S)
                "input_ids": torch.from_numpy(input_ids),
                "labels": torch.from_numpy(labels),
            }

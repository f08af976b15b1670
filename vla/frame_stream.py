"""The resumable, shardable frame stream every training data source is (`vla.data` builds them).

`FrameStream` holds what all sources share: rank / world-size resolution, `frames_consumed` bookkeeping,
`state_dict()` / `load_state_dict()` / `skip()` for exact resume, and the frame -> model sample step (the model's
`sequence_builder` and `image_processor`). A source implements `frames()`: this rank's frames from position
`self._start` on, each `{"image": (S, S, 3) uint8, "action": (7,) float32 normalized, "instruction": str}`, counting
`frames_consumed`.

`IndexedFrameStream` adds what sources holding every frame of the split at hand share (a video export decoded in
memory, a memory-mapped frame store): round-robin rank shards of the split's frames, train epochs as seeded
permutations, chunks of frames gathered onto a device, augmented there (`vla.augment.augment_batch`) and normalized
by `image_processor.normalize_batch`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.data_config import SPLITS, STANDARDIZE_FNS, hold_mask
from vla.normalization import load_dataset_statistics, normalize_actions

STATS_NAME = "dataset_statistics.json"  # a frame folder's `{dataset_name: stats}`


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): as given, or torch.distributed's when both are None and a process group is up."""
    if rank is None and world_size is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    return rank, world_size


class FrameStream(torch.utils.data.IterableDataset):
    """Model-ready frames: `pixel_values (6, S, S) float32`, `input_ids (L,)`, `labels (L,)` int64.

    Subclasses set `dataset_name`, `dataset_statistics` (`{dataset_name: stats}`) and `num_frames` (the split's
    frames, all ranks together) and implement `frames()`. The stream is a pure function of the seed and the rank, so
    `load_state_dict(state_dict())` on a fresh stream continues exactly where the first one stopped. Every `iter`
    starts at the position of the last `skip` / `load_state_dict` (0 by default).
    """

    resume_keys: tuple[str, ...] = ("seed", "world_size")  # must match for a resume to continue the same stream

    def __init__(self, sequence_builder, image_processor, *, seed: int, rank: int | None, world_size: int | None):
        super().__init__()
        self.sequence_builder, self.image_processor, self.seed = sequence_builder, image_processor, seed
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self._start = self.frames_consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {"frames_consumed": self.frames_consumed, **{key: getattr(self, key) for key in self.resume_keys}}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume after `state["frames_consumed"]` frames of this rank's stream (the next `iter` starts there)."""
        for key in self.resume_keys:
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"cannot resume a stream made with {key}={state[key]} with {key}={getattr(self, key)}")
        self.skip(int(state["frames_consumed"]))

    def skip(self, frames: int) -> FrameStream:
        """Start the next iteration after `frames` frames of this rank's stream."""
        if frames < 0:
            raise ValueError(f"cannot skip {frames} frames")
        self._start = self.frames_consumed = frames
        return self

    def frames(self) -> Iterator[dict[str, Any]]:
        """This rank's frames before the model's processors (see the module docstring)."""
        raise NotImplementedError

    def training_sample(self, pixel_values: torch.Tensor, instruction: str, action: np.ndarray) -> dict:
        """One training sample (docs/DESIGN.md) from processed pixels and a normalized action."""
        input_ids, labels = self.sequence_builder.training_sample(instruction, action)
        return {
            "pixel_values": pixel_values,
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for frame in self.frames():
            pixel_values = self.image_processor(frame["image"])[0]  # (6, S, S)
            yield self.training_sample(pixel_values, frame["instruction"], frame["action"])

    def _refuse_workers(self, why: str) -> None:
        if torch.utils.data.get_worker_info() is not None:
            raise ValueError(f"{type(self).__name__} {why}; use DataLoader(num_workers=0)")


class IndexedFrameStream(FrameStream):
    """A `FrameStream` over the frames of a folder `root`, gathered by index (subclasses implement `_open` and
    `_gather`).

    `__init__` checks the arguments and calls `_open`, which reads the folder (`_read_header`) and calls
    `_assign_frames`. This rank holds frames r, r + w, r + 2w, ... of the split (episodes in storage order). Train:
    endless, each epoch a permutation of this rank's frames drawn from (seed, rank, epoch); chunks of `chunk_size`
    stream positions go to `device`, are augmented there (generator seeded by (seed, rank, chunk)) when `image_aug`.
    Val: one pass in storage order, never augmented. `max_hold`: the frames `hold_mask` drops are never drawn.
    """

    resume_keys = ("seed", "world_size", "chunk_size")  # chunking fixes the augmentation's seeds

    def __init__(
        self,
        root: Path,
        sequence_builder,
        image_processor,
        *,
        split: str = "train",
        seed: int = 7,
        image_aug: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        device: str | torch.device | None = "cpu",
        chunk_size: int = 256,
        max_hold: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {sorted(SPLITS)}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        super().__init__(sequence_builder, image_processor, seed=seed, rank=rank, world_size=world_size)
        self.split, self.chunk_size, self.device = split, chunk_size, torch.device(device or "cpu")
        self.max_hold = max_hold
        self._augment = None
        if image_aug and split == "train":
            from vla.augment import augment_batch

            self._augment = augment_batch
        self._permutation_cache: tuple[int, np.ndarray] | None = None
        self.root = Path(root)
        self._open()

    def _open(self) -> None:
        """Read the folder `self.root`: `_read_header` its index, `_assign_frames` the split's frames and hold what
        `_gather` reads."""
        raise NotImplementedError

    def _read_header(self, index: dict, *, damaged: str, size_fix: str) -> int:
        """Set `dataset_name` and `standardize` from the folder's index and `dataset_statistics` from its
        `STATS_NAME` (which must hold the dataset's entry; else ValueError ending in `damaged`); check the frames'
        size against the image processor's (else ValueError ending in `size_fix`, formatted with `expected`).
        Returns the frames' size."""
        self.dataset_name, self.standardize = str(index["dataset_name"]), str(index["standardize"])
        self.dataset_statistics = load_dataset_statistics(self.root / STATS_NAME)
        if self.dataset_name not in self.dataset_statistics:
            raise ValueError(f"{self.root / STATS_NAME} has no entry {self.dataset_name!r}: {damaged}")
        size = int(index["image_size"])
        expected = getattr(self.image_processor, "image_size", size)
        if expected != size:
            raise ValueError(f"{self.root} holds {size}x{size} frames but the image processor expects {expected}; "
                             + size_fix.format(expected=expected))  # fmt: skip
        return size

    def _assign_frames(self, lengths: np.ndarray, actions: np.ndarray, instructions: list[str], where: str) -> None:
        """Deal the split's frames to ranks. `lengths (E,)` of the split's episodes, their raw actions `(sum, 7)`
        concatenated, one instruction each. Sets `num_episodes`, `num_frames` (all ranks) and this rank's
        `_mine` (indices into the split's frames), `_raw_actions`, `_episode`, `_drawn` (indices into `_mine` that
        the stream draws: those `hold_mask` keeps)."""
        lengths = np.asarray(lengths, np.int64)
        keep = hold_mask(actions, lengths, self.max_hold)
        self.num_episodes, self.num_frames = len(lengths), int(keep.sum())
        if self.num_frames == 0:
            raise ValueError(f"split {self.split!r} of {where} holds no episodes")
        self._mine = np.arange(self.rank, len(keep), self.world_size)
        self._drawn = np.flatnonzero(keep[self._mine])
        if len(self._drawn) == 0:
            raise ValueError(
                f"rank {self.rank} of {self.world_size} gets none of the {self.num_frames} {self.split} frames"
            )
        self._raw_actions = np.asarray(actions, np.float32)[self._mine]  # (n, 7)
        self._episode = np.repeat(np.arange(len(lengths)), lengths)[self._mine]  # (n,) -> instruction
        self._instructions = list(instructions)

    def swap_instructions(self) -> dict[str, str]:
        """Give every episode another task's instruction: each distinct instruction of the split becomes the next one
        in sorted order (a cycle: none keeps its own). Held-out metrics with swapped against true instructions
        measure how much a model reads its instruction (`scripts/val_metrics.py --swap_instructions`). Returns the
        mapping."""
        distinct = sorted(set(self._instructions))
        if len(distinct) < 2:
            raise ValueError(f"split {self.split!r} of {self.root} holds {len(distinct)} distinct instruction(s); "
                             "swapping them needs 2 or more tasks")  # fmt: skip
        mapping = dict(zip(distinct, distinct[1:] + distinct[:1], strict=True))
        self._instructions = [mapping[text] for text in self._instructions]
        return mapping

    def _gather(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 (len(indices), S, S, 3) on `self.device`: this rank's frames `indices` (into `_mine`)."""
        raise NotImplementedError

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._permutation_cache is None or self._permutation_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, 0, self.rank, epoch])
            self._permutation_cache = (epoch, self._drawn[rng.permutation(len(self._drawn))])
        return self._permutation_cache[1]

    def _indices(self, start: int, stop: int) -> np.ndarray:
        """Indices into this rank's frames of stream positions [start, stop)."""
        positions, n = np.arange(start, stop), len(self._drawn)
        if self.split != "train":
            return self._drawn[positions]
        epochs = positions // n
        return np.concatenate([self._permutation(e)[positions[epochs == e] % n] for e in np.unique(epochs)])

    def _chunks(self) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """(uint8 (C, S, S, 3) on device, augmented when asked; their indices into this rank's frames) from position
        `self._start` on. Chunk k always covers positions [k * chunk_size, (k + 1) * chunk_size), so a resumed
        stream augments each frame as the uninterrupted one did."""
        self._refuse_workers("batches on the device itself")  # each worker would replay the whole stream
        size, end = self.chunk_size, None if self.split == "train" else len(self._drawn)
        chunk = self._start // size
        while end is None or chunk * size < end:
            low = chunk * size
            indices = self._indices(low, (low + size) if end is None else min(low + size, end))
            images = self._gather(indices)
            if self._augment is not None:
                seed = np.random.SeedSequence([self.seed, 1, self.rank, chunk]).generate_state(1, np.uint64)[0]
                images = self._augment(images, torch.Generator().manual_seed(int(seed)))
            skip = max(self._start - low, 0)
            yield images[skip:], indices[skip:]
            chunk += 1

    def _actions(self) -> np.ndarray:
        """(n, 7) standardized, BOUNDS_Q99-normalized actions with `self.dataset_statistics` as set now (a caller
        may substitute a checkpoint's statistics)."""
        stats = self.dataset_statistics[self.dataset_name]["action"]
        return normalize_actions(STANDARDIZE_FNS[self.standardize](self._raw_actions), stats)

    def frames(self) -> Iterator[dict[str, Any]]:
        """This rank's frames before the model's processors: `image (S, S, 3) uint8` (numpy), `action (7,) float32`
        (normalized), `instruction: str`. Counts `frames_consumed`."""
        actions = self._actions()
        self.frames_consumed = self._start
        for images, indices in self._chunks():
            for image, i in zip(images.cpu().numpy(), indices, strict=True):
                self.frames_consumed += 1
                yield {"image": image, "action": actions[i], "instruction": self._instructions[self._episode[i]]}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        actions = self._actions()
        self.frames_consumed = self._start
        for images, indices in self._chunks():
            pixels = self.image_processor.normalize_batch(images)  # (C, 6, S, S) on device
            for pixel_values, i in zip(pixels, indices, strict=True):
                self.frames_consumed += 1
                yield self.training_sample(pixel_values, self._instructions[self._episode[i]], actions[i])

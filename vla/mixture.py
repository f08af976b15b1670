"""Mixtures: several RLDS datasets interleaved into one training stream, each read through its own spec and
normalized with its own statistics.

Sampling follows OpenVLA: every frame of the stream comes from dataset i with probability p_i, where p is the mixture's
weights, each multiplied by the dataset's number of train frames when `balance_weights` (the default, as OpenVLA
trains), normalized to sum 1. Each dataset is its own endless shuffled stream (`vla.rlds.RLDSDataset`); the choice of
dataset for stream position n is a pure function of (seed, rank, n), so the mixture resumes exactly: its state holds
the number of draws and every dataset's position. One "epoch" (`num_frames`) counts the frames of the datasets with
weight exactly 1.0 ("primary" datasets, all datasets if none is): max over them of frames_i / p_i.

`dataset_statistics` holds one entry per dataset name, so `dataset_statistics.json` and a checkpoint's `norm_stats`
carry them all and `unnorm_key` picks one at inference. The val split reads each dataset's val frames once, one
dataset after another.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import yaml

from vla.data_config import DataConfig
from vla.frame_stream import FrameStream

_LIBERO = ("libero_spatial_no_noops", "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops")
MIXTURES: dict[str, list[tuple[str, float]]] = {  # name -> [(dataset, weight)]
    **{name: [(name, 1.0)] for name in _LIBERO},
    "libero_4_task_suites_no_noops": [(name, 1.0) for name in _LIBERO],
    "bridge": [("bridge_orig", 1.0)],
    "rt_1": [("fractal20220817_data", 1.0)],
    "bridge_rt_1": [("bridge_orig", 1.0), ("fractal20220817_data", 1.0)],
}
BLOCK = 4096  # dataset choices are drawn in blocks of this many stream positions, each block from its own seed


def parse_mix(mix: str) -> list[tuple[str, float]]:
    """A mixture name (`MIXTURES`) or an inline YAML list `[[name, weight], ...]` (also `{name: weight}` or bare
    names, weight 1.0) -> [(dataset, weight)]; one ValueError naming what is wrong."""
    if mix in MIXTURES:
        return list(MIXTURES[mix])
    try:
        value = yaml.safe_load(mix)
    except yaml.YAMLError:
        value = None
    if isinstance(value, dict):
        value = list(value.items())
    if not isinstance(value, list) or not value:
        raise ValueError(f"data.mix {mix!r} is neither a known mixture ({sorted(MIXTURES)}) nor a YAML list "
                         "[[dataset, weight], ...]")  # fmt: skip
    pairs = []
    for item in value:
        item = [item, 1.0] if isinstance(item, str) else list(item.items())[0] if isinstance(item, dict) else item
        if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(f"data.mix entry {item!r} is not [dataset_name, weight]")
        name, weight = item
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 < weight < math.inf):
            raise ValueError(f"data.mix: dataset {name!r} has weight {weight!r}; weights are positive numbers")
        pairs.append((name, float(weight)))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"data.mix names a dataset twice: {names}")
    return pairs


def mixture_configs(cfg: DataConfig) -> list[tuple[DataConfig, float]]:
    """One single-dataset config per entry of `cfg.mix` (same root, split, seed, augmentation...), with its weight."""
    return [(dataclasses.replace(cfg, dataset_name=name, mix=None), w) for name, w in parse_mix(cfg.mix)]


def sampling_probabilities(weights, frames, balance_weights: bool = True) -> np.ndarray:
    """p_i = w_i (* frames_i when balancing) / sum."""
    p = np.asarray(weights, np.float64) * (np.asarray(frames, np.float64) if balance_weights else 1.0)
    if not np.all(p > 0):
        raise ValueError(f"every dataset of a mixture needs frames and a positive weight (weights {weights}, "
                         f"frames {frames})")  # fmt: skip
    return p / p.sum()


def epoch_frames(weights, frames, probabilities) -> int:
    """Frames in one pass of the mixture: max over the primary datasets (weight 1.0) of frames_i / p_i."""
    primary = [i for i, w in enumerate(weights) if w == 1.0] or list(range(len(weights)))
    return int(max(frames[i] / probabilities[i] for i in primary))


class MixtureDataset(FrameStream):
    """Model-ready frames of several RLDS datasets interleaved by weight (module docstring). `streams` are the
    per-dataset `RLDSDataset`s of one rank (`vla.data.make_dataset` builds them from `data.mix`)."""

    def __init__(self, streams: list, weights: list[float], *, split: str, seed: int, balance_weights: bool,
                 label: str, sequence_builder, image_processor) -> None:  # fmt: skip
        first = streams[0]
        super().__init__(sequence_builder, image_processor, seed=seed, rank=first.rank, world_size=first.world_size)
        self.streams, self.weights, self.split, self.dataset_name = list(streams), list(weights), split, label
        self.names = [s.dataset_name for s in self.streams]
        frames = [s.num_frames for s in self.streams]
        self.probabilities = sampling_probabilities(weights, frames, balance_weights)
        self.num_episodes = sum(s.num_episodes for s in self.streams)
        self.num_frames = epoch_frames(weights, frames, self.probabilities) if split == "train" else sum(frames)

    @property
    def dataset_statistics(self) -> dict[str, dict]:
        return {name: stats for s in self.streams for name, stats in s.dataset_statistics.items()}

    @dataset_statistics.setter
    def dataset_statistics(self, statistics: dict[str, dict]) -> None:
        """Replace datasets' statistics by name (e.g. with a checkpoint's); every key must be one of the mixture's."""
        unknown = sorted(set(statistics) - set(self.names))
        if unknown:
            raise ValueError(f"statistics for {unknown} match no dataset of the mixture {self.names}; a mixture "
                             "normalizes each dataset with its own statistics (drop model.unnorm_key)")  # fmt: skip
        for stream in self.streams:
            if stream.dataset_name in statistics:
                stream.dataset_statistics = {stream.dataset_name: statistics[stream.dataset_name]}

    # ---- the sampler: dataset of every stream position, a pure function of (seed, rank, position) ----

    @lru_cache(maxsize=8)  # noqa: B019  (a few blocks per stream; the stream lives as long as training)
    def _block(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 3, self.rank, block])
        return rng.choice(len(self.streams), size=BLOCK, p=self.probabilities)

    def choices(self, start: int, stop: int) -> np.ndarray:
        """The dataset index of this rank's stream positions [start, stop) (train)."""
        blocks = range(start // BLOCK, -(-stop // BLOCK))
        drawn = np.concatenate([self._block(b) for b in blocks]) if len(blocks) else np.zeros(0, np.int64)
        offset = blocks.start * BLOCK
        return drawn[start - offset : stop - offset]

    def positions(self, frames: int) -> list[int]:
        """Each dataset's position in its own stream after `frames` frames of the mixture."""
        if self.split == "train":
            return np.bincount(self.choices(0, frames), minlength=len(self.streams)).tolist()
        out, left = [], frames
        for n in self._val_frames():
            out.append(min(left, n))
            left -= out[-1]
        return out

    def _val_frames(self) -> list[int]:  # this rank's share of each dataset's val frames (round-robin)
        return [len(range(self.rank, s.num_frames, self.world_size)) for s in self.streams]

    # ---- resume ----

    def state_dict(self) -> dict[str, Any]:
        positions = self.positions(self.frames_consumed)
        return {**super().state_dict(), "draws": self.frames_consumed,
                "datasets": {name: {"frames_consumed": n} for name, n in zip(self.names, positions, strict=True)}}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume after `state["frames_consumed"]` frames; refuses a state of another mixture or other weights."""
        saved = state.get("datasets", {})
        if sorted(saved) != sorted(self.names):
            raise ValueError(f"cannot resume a mixture of {sorted(saved)} as a mixture of {sorted(self.names)}")
        super().load_state_dict(state)
        expected = dict(zip(self.names, self.positions(self.frames_consumed), strict=True))
        got = {name: int(s["frames_consumed"]) for name, s in saved.items()}
        if got != expected:
            raise ValueError(f"the saved per-dataset positions {got} do not match this mixture's sampler "
                             f"({expected}): the weights, seed or dataset sizes changed since the state was saved")  # fmt: skip

    # ---- frames ----

    def frames(self) -> Iterator[dict[str, Any]]:
        """This rank's frames before the model's processors, as a single dataset's, plus `dataset_name`."""
        self._refuse_workers("holds one tf.data pipeline per dataset")
        starts = self.positions(self._start)
        self.frames_consumed = self._start
        if self.split != "train":
            for stream, start in zip(self.streams, starts, strict=True):
                for frame in stream.skip(start).frames():
                    self.frames_consumed += 1
                    yield {**frame, "dataset_name": stream.dataset_name}
            return
        iterators: dict[int, Iterator] = {}  # opened on first use: a dataset never drawn costs nothing
        position = self._start
        while True:
            for k in self.choices(position, (position // BLOCK + 1) * BLOCK):
                if k not in iterators:
                    iterators[k] = self.streams[k].skip(starts[k]).frames()
                frame = next(iterators[k])
                position += 1
                self.frames_consumed = position
                yield {**frame, "dataset_name": self.names[k]}

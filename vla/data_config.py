"""The data contracts every frame source shares: `DataConfig`, the sources, the 95/5 episode split and the action
standardizations. A leaf module: the sources import it, `vla.data` dispatches over them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_SOURCES = ("rlds", "video_frames", "frames", "synthetic")
RLDS_VERSION = "1.0.0"  # every modified_libero_rlds dataset is stored as version 1.0.0
TRAIN_PERCENT = 95  # OpenVLA trains on train[:95%] of the episodes; train[95%:] is held out
SPLITS = {"train": f"train[:{TRAIN_PERCENT}%]", "val": f"train[{TRAIN_PERCENT}%:]"}  # as tfds split strings


def train_episodes(num_episodes: int) -> int:
    """How many of `num_episodes` (in storage order) are the train split: tfds' `train[:95%]` boundary, the percent
    of the count rounded to the closest integer (Python's round, as tfds)."""
    return int(round(TRAIN_PERCENT * num_episodes / 100))


def libero_standardize(actions: np.ndarray) -> np.ndarray:
    """LIBERO actions (..., 7) -> OXE convention: gripper raw -1 open / +1 close -> clip [0, 1] -> 1 - g, so
    1 = open and 0 = close (`libero_dataset_transform`); the 6 end-effector dims are unchanged. float32."""
    actions = np.array(actions, dtype=np.float32)
    actions[..., -1] = 1.0 - np.clip(actions[..., -1], 0.0, 1.0)
    return actions


def identity_standardize(actions: np.ndarray) -> np.ndarray:
    """For datasets already in the OXE convention (gripper 1 = open)."""
    return np.asarray(actions, dtype=np.float32)


STANDARDIZE_FNS = {"libero": libero_standardize, "identity": identity_standardize}


def hold_mask(actions: np.ndarray, lengths: np.ndarray, max_hold: int | None) -> np.ndarray:
    """(N, 7) actions of episodes `lengths (E,)` back to back -> (N,) bool, True for the frames to keep: all but the
    frames after the first `max_hold` of each hold (consecutive steps of one episode with no translation and one
    gripper command, a scripted expert's close or open; None: keep all). Such a hold is frames alike with one label,
    then another: a policy reading one image learns to stay (docs/RESULTS.md, sixteenth session)."""
    actions = np.asarray(actions)
    keep = np.ones(len(actions), dtype=bool)
    if max_hold is None:
        return keep
    still = np.linalg.norm(actions[:, :3], axis=1) == 0
    first = np.zeros(len(actions), dtype=bool)
    first[np.cumsum(np.concatenate([[0], lengths]))[:-1].astype(np.int64)] = True
    run = 0
    for t in range(len(actions)):
        held = t > 0 and not first[t] and still[t - 1] and actions[t, 6] == actions[t - 1, 6]
        run = (run + 1 if held else 1) if still[t] else 0
        keep[t] = run <= max_hold
    return keep


@dataclass
class DataConfig:
    """Which frames to train on and how they are shuffled, augmented and resized."""

    source: str = "rlds"  # one of DATA_SOURCES
    data_root_dir: Path = Path("datasets/modified_libero_rlds")  # rlds: folder holding `<dataset_name>/<version>/`
    dataset_name: str = "libero_spatial_no_noops"  # also the key of its entry in dataset_statistics.json
    spec_file: Path | None = None  # rlds: a YAML file (or folder of them) of dataset specs; adds to vla/datasets/
    mix: str | None = None  # rlds: train on a mixture: a name in vla.mixture.MIXTURES or "[[name, weight], ...]"
    balance_weights: bool = True  # mix: scale each weight by the dataset's frame count (OpenVLA); false: as given
    frames_dir: Path | None = None  # video_frames / frames: the export or frame-store folder
    version: str = RLDS_VERSION  # tfds version folder
    image_key: str = "image"  # datasets without a spec: steps/observation/<image_key>, the camera the model sees
    language_key: str = "language_instruction"  # datasets without a spec: steps/<language_key>, the instruction
    standardize: str = "libero"  # datasets without a spec: "libero" (flip the gripper) or "identity"
    split: str = "train"  # "train" = first 95 percent of episodes (infinite, shuffled); "val" = the rest (one pass)
    image_aug: bool = False  # train split only: random crop + color jitter (vla.augment)
    shuffle_buffer_size: int = 100_000  # rlds: frames in the shuffle buffer (OpenVLA: 100K); capped at the split
    seed: int = 7  # seeds the frame shuffle and the augmentation
    image_size: int = 224  # frames are resized to image_size x image_size (lanczos3, antialias)
    cache_dir: Path | None = None  # where statistics go if the dataset dir is read-only (default ~/.cache/vla)
    chunk_size: int = 256  # video_frames / frames: frames moved to the device and augmented together (resume key)
    max_hold: int | None = None  # video_frames / frames: frames kept of each still hold (`hold_mask`); None: all

    def __post_init__(self) -> None:
        self.data_root_dir = Path(self.data_root_dir)
        self.frames_dir = None if self.frames_dir is None else Path(self.frames_dir)
        self.cache_dir = None if self.cache_dir is None else Path(self.cache_dir)
        self.spec_file = None if self.spec_file is None else Path(self.spec_file)
        if self.mix is not None and self.source != "rlds":
            raise ValueError(f"data.mix reads RLDS datasets; it needs data.source=rlds, not {self.source!r}")
        if self.source not in DATA_SOURCES:
            raise ValueError(f"data source {self.source!r} is not one of {DATA_SOURCES}")
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} is not one of {sorted(SPLITS)}")
        if self.standardize not in STANDARDIZE_FNS:
            raise ValueError(f"standardize {self.standardize!r} is not one of {sorted(STANDARDIZE_FNS)}")
        if self.max_hold is not None and (self.max_hold < 1 or self.source not in ("video_frames", "frames")):
            raise ValueError(f"data.max_hold must be >= 1 and reads a frame folder (data.source video_frames or "
                             f"frames), got {self.max_hold} with source {self.source!r}")  # fmt: skip
        if self.shuffle_buffer_size < 1 or self.image_size < 1 or self.chunk_size < 1:
            raise ValueError("shuffle_buffer_size, image_size and chunk_size must be positive")

    @property
    def dataset_dir(self) -> Path:
        """rlds: `<data_root_dir>/<dataset_name>/<version>/`."""
        return self.data_root_dir / self.dataset_name / self.version

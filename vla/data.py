"""One data interface for training: `DataConfig` says where frames come from, `make_dataset` builds the stream.

Every source yields the same training samples (docs/DESIGN.md, "Training sample") through one resumable, shardable
frame-stream interface (`vla.frame_stream.FrameStream`): `dataset_name`, `dataset_statistics` (`{name: stats}`),
`num_frames`, `state_dict()`, `load_state_dict(state)`, `skip(frames)`, `frames()` (before the model's processors)
and `__iter__` (model-ready).

Sources:
- `rlds`: an RLDS (tfds) dataset in the modified_libero_rlds layout (`vla.rlds`, needs TensorFlow).
- `video_frames`: an H.264 export of an RLDS dataset (`vla.video_frames`, PyAV; no TensorFlow).
- `frames`: a raw uint8 frame store written without TensorFlow (`vla.frame_store`; e.g. demos collected on a GPU
  node).
- `synthetic`: random LIBERO-shaped frames (benchmarks; no dataset).
A future `mixture` source (several datasets with weights) would add a list of per-dataset configs here and one more
branch in `make_dataset` / `check_data`; nothing else needs to change.

Also here, because every source shares them: the 95 / 5 episode split (`SPLITS`, `train_episodes`) and the action
standardizations (`STANDARDIZE_FNS`).

CONTRACT (shared by parallel work, keep the names): `DataConfig`, `DATA_SOURCES`, `make_dataset`, `check_data`.
"""

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


@dataclass
class DataConfig:
    """Which frames to train on and how they are shuffled, augmented and resized."""

    source: str = "rlds"  # one of DATA_SOURCES
    data_root_dir: Path = Path("datasets/modified_libero_rlds")  # rlds: folder holding `<dataset_name>/<version>/`
    dataset_name: str = "libero_spatial_no_noops"  # also the key of its entry in dataset_statistics.json
    frames_dir: Path | None = None  # video_frames / frames: the export or frame-store folder
    version: str = RLDS_VERSION  # tfds version folder
    image_key: str = "image"  # steps/observation/<image_key>: the camera the model sees (agentview)
    language_key: str = "language_instruction"  # steps/<language_key>: the instruction text
    standardize: str = "libero"  # action standardization: "libero" (flip the gripper) or "identity"
    split: str = "train"  # "train" = first 95 percent of episodes (infinite, shuffled); "val" = the rest (one pass)
    image_aug: bool = False  # train split only: random crop + color jitter (vla.augment)
    shuffle_buffer_size: int = 100_000  # rlds: frames in the shuffle buffer (OpenVLA: 100K); capped at the split
    seed: int = 7  # seeds the frame shuffle and the augmentation
    image_size: int = 224  # frames are resized to image_size x image_size (lanczos3, antialias)
    cache_dir: Path | None = None  # where statistics go if the dataset dir is read-only (default ~/.cache/vla)
    chunk_size: int = 256  # video_frames / frames: frames moved to the device and augmented together (resume key)

    def __post_init__(self) -> None:
        self.data_root_dir = Path(self.data_root_dir)
        self.frames_dir = None if self.frames_dir is None else Path(self.frames_dir)
        self.cache_dir = None if self.cache_dir is None else Path(self.cache_dir)
        if self.source not in DATA_SOURCES:
            raise ValueError(f"data source {self.source!r} is not one of {DATA_SOURCES}")
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} is not one of {sorted(SPLITS)}")
        if self.standardize not in STANDARDIZE_FNS:
            raise ValueError(f"standardize {self.standardize!r} is not one of {sorted(STANDARDIZE_FNS)}")
        if self.shuffle_buffer_size < 1 or self.image_size < 1 or self.chunk_size < 1:
            raise ValueError("shuffle_buffer_size, image_size and chunk_size must be positive")

    @property
    def dataset_dir(self) -> Path:
        """rlds: `<data_root_dir>/<dataset_name>/<version>/`."""
        return self.data_root_dir / self.dataset_name / self.version


def _check_rlds(cfg: DataConfig) -> None:
    from vla.rlds import check_rlds_dir

    root = cfg.data_root_dir
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.data_root_dir {root} does not exist; point it at the folder that holds "
            f"<dataset_name>/{cfg.version}/ (e.g. the modified_libero_rlds download)"
        )
    if not (root / cfg.dataset_name).is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / cfg.version).is_dir())
        raise FileNotFoundError(
            f"unknown dataset {cfg.dataset_name!r}: no {root / cfg.dataset_name}; datasets in {root}: {found or 'none'}"
        )
    check_rlds_dir(cfg.dataset_dir)


def _frames_dir(cfg: DataConfig) -> Path:
    if cfg.frames_dir is None:
        made_by = {"video_frames": "scripts/export_video_frames.py", "frames": "vla.frame_store.FrameStoreWriter"}
        raise ValueError(f"data.source={cfg.source!r} reads data.frames_dir: set it to the folder {made_by[cfg.source]}"
                         " wrote")  # fmt: skip
    return cfg.frames_dir


def _check_image_size(cfg: DataConfig, root: Path, size: int) -> None:
    if size != cfg.image_size:
        raise ValueError(f"{root} holds {size}x{size} frames but data.image_size is {cfg.image_size}; set "
                         f"data.image_size={size} (and a model of that size) or rebuild {root} at {cfg.image_size}")  # fmt: skip


def check_data(cfg: DataConfig) -> None:
    """Every check of the data that needs neither TensorFlow nor weights; raises one clear error naming the path and
    the fix (the RLDS folders and shards, a video export's index, a frame store's index and files)."""
    if cfg.source not in DATA_SOURCES:
        raise ValueError(f"data source {cfg.source!r} is not one of {DATA_SOURCES}")
    if cfg.source == "rlds":
        _check_rlds(cfg)
    elif cfg.source == "video_frames":
        from vla.video_frames import read_index

        root = _frames_dir(cfg)
        _check_image_size(cfg, root, int(read_index(root)["image_size"]))
    elif cfg.source == "frames":
        from vla.frame_store import read_store_index

        root = _frames_dir(cfg)
        _check_image_size(cfg, root, int(read_store_index(root)["image_size"]))


def make_dataset(cfg: DataConfig, sequence_builder, image_processor, *, rank: int | None = 0,
                 world_size: int | None = 1, device=None):  # fmt: skip
    """The frame stream of `cfg.source` (see the module docstring for its interface). `rank` / `world_size` None:
    torch.distributed's. `device`: where video_frames / frames put, augment and normalize pixels (default CPU)."""
    if cfg.source == "rlds":
        from vla.rlds import RLDSDataset

        return RLDSDataset(cfg, sequence_builder, image_processor, rank=rank, world_size=world_size)
    if cfg.source in ("video_frames", "frames"):
        if cfg.source == "video_frames":
            from vla.video_frames import VideoFrameDataset as Dataset
        else:
            from vla.frame_store import FrameStoreDataset as Dataset
        return Dataset(_frames_dir(cfg), sequence_builder, image_processor, split=cfg.split, seed=cfg.seed,
                       image_aug=cfg.image_aug, rank=rank, world_size=world_size, device=device or "cpu",
                       chunk_size=cfg.chunk_size)  # fmt: skip
    if cfg.source == "synthetic":
        from vla.synthetic_data import SyntheticDataset

        return SyntheticDataset(sequence_builder, image_processor, seed=cfg.seed, rank=rank, world_size=world_size,
                                image_size=cfg.image_size)  # fmt: skip
    raise ValueError(f"data source {cfg.source!r} is not one of {DATA_SOURCES}")

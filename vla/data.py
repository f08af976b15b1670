"""One data interface for training: `DataConfig` says where frames come from, `make_dataset` builds the stream.

Every source yields the same training samples (docs/DESIGN.md, "Training sample") through one resumable, shardable
frame-stream interface: `dataset_name`, `dataset_statistics` (`{name: stats}`), `num_frames`, `state_dict()`,
`load_state_dict(state)`, `skip(frames)`, `frames()` (before the model's processors) and `__iter__` (model-ready).

Sources:
- `rlds`: an RLDS (tfds) dataset in the modified_libero_rlds layout (`vla.rlds`, needs TensorFlow).
- `video_frames`: an H.264 export of an RLDS dataset (`vla.video_frames`, PyAV; no TensorFlow).
- `frames`: a raw uint8 frame store written without TensorFlow (`vla.frame_store`; e.g. demos collected on a GPU
  node).
- `synthetic`: random LIBERO-shaped frames (benchmarks; no dataset).

CONTRACT (shared by parallel work, keep the names): `DataConfig`, `DATA_SOURCES`, `make_dataset`, `check_data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA_SOURCES = ("rlds", "video_frames", "frames", "synthetic")
RLDS_VERSION = "1.0.0"  # every modified_libero_rlds dataset is stored as version 1.0.0


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
    split: str = "train"  # "train" = first 95 % of episodes (infinite, shuffled); "val" = last 5 % (one pass)
    image_aug: bool = False  # train split only: random crop + color jitter (vla.augment)
    shuffle_buffer_size: int = 100_000  # frames in the shuffle buffer (OpenVLA: 100K); capped at the split's size
    seed: int = 7  # seeds the frame shuffle and the augmentation
    image_size: int = 224  # frames are resized to image_size x image_size (lanczos3, antialias)
    cache_dir: Path | None = None  # where statistics go if the dataset dir is read-only (default ~/.cache/vla)


def check_data(cfg: DataConfig) -> None:
    """Every check of the data that needs neither TensorFlow nor weights; raises one clear error."""
    # TEMP: replaced by the data branch (a dispatch to the existing readers so the training branch can run)
    if cfg.source not in DATA_SOURCES:
        raise ValueError(f"data.source {cfg.source!r} must be one of {DATA_SOURCES}")
    if cfg.source in ("video_frames", "frames"):
        if cfg.frames_dir is None:
            raise ValueError(f"data.source {cfg.source!r} needs data.frames_dir")
        from vla.video_frames import read_index

        read_index(Path(cfg.frames_dir))
    elif cfg.source == "rlds":
        from vla.rlds import check_rlds_dir

        root = Path(cfg.data_root_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"data.data_root_dir {root} does not exist; point it at the folder that holds "
                                    f"<dataset_name>/{cfg.version}/ (e.g. the modified_libero_rlds download)")  # fmt: skip
        if not (root / cfg.dataset_name).is_dir():
            found = sorted(p.name for p in root.iterdir() if (p / cfg.version).is_dir())
            raise FileNotFoundError(f"unknown dataset {cfg.dataset_name!r}: no {root / cfg.dataset_name}; datasets in "
                                    f"{root}: {found or 'none'}")  # fmt: skip
        check_rlds_dir(root / cfg.dataset_name / cfg.version)


def make_dataset(cfg: DataConfig, sequence_builder, image_processor, *, rank: int = 0, world_size: int = 1,
                 device=None):  # fmt: skip
    """The frame stream of `cfg.source` (see the module docstring for its interface)."""
    # TEMP: replaced by the data branch (a dispatch to the existing readers so the training branch can run)
    if cfg.source == "synthetic":
        from vla.synthetic_data import SyntheticDataset

        return SyntheticDataset(sequence_builder, image_processor, cfg.seed, rank, world_size,
                                image_size=cfg.image_size)  # fmt: skip
    if cfg.source in ("video_frames", "frames"):
        from vla.video_frames import VideoFrameDataset

        return VideoFrameDataset(cfg.frames_dir, sequence_builder, image_processor, seed=cfg.seed,
                                 image_aug=cfg.image_aug, rank=rank, world_size=world_size,
                                 device=device or "cpu")  # fmt: skip
    from dataclasses import asdict

    from vla.rlds import RLDSConfig, RLDSDataset

    fields = {k: v for k, v in asdict(cfg).items() if k not in ("source", "frames_dir")}
    return RLDSDataset(RLDSConfig(**fields), sequence_builder, image_processor, rank, world_size)

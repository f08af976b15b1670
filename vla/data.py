"""One data interface for training: `DataConfig` says where frames come from, `make_dataset` builds the stream.

Every source yields the same training samples (docs/DESIGN.md, "Training sample") through one resumable, shardable
frame-stream interface (`vla.frame_stream.FrameStream`): `dataset_name`, `dataset_statistics` (`{name: stats}`),
`num_frames`, `state_dict()`, `load_state_dict(state)`, `skip(frames)`, `frames()` (before the model's processors)
and `__iter__` (model-ready).

Sources:
- `rlds`: an RLDS (tfds) dataset read through its spec (`vla.dataset_specs`: built-in LIBERO and Open
  X-Embodiment specs, or the user's `data.spec_file`; `vla.rlds`, needs TensorFlow), or with `data.mix` a weighted
  mixture of them (`vla.mixture`).
- `video_frames`: an H.264 export of an RLDS dataset (`vla.video_frames`, PyAV; no TensorFlow).
- `frames`: a raw uint8 frame store written without TensorFlow (`vla.frame_store`; e.g. demos collected on a GPU
  node).
- `synthetic`: random LIBERO-shaped frames (benchmarks; no dataset).

Also here, because every source shares them: the 95 / 5 episode split (`SPLITS`, `train_episodes`) and the action
standardizations (`STANDARDIZE_FNS`).

CONTRACT (shared by parallel work, keep the names): `DataConfig`, `DATA_SOURCES`, `make_dataset`, `check_data`.
"""

from __future__ import annotations

from pathlib import Path

from vla.data_config import (  # noqa: F401  (the data contracts, re-exported: `vla.data` is the front door)
    DATA_SOURCES,
    RLDS_VERSION,
    SPLITS,
    STANDARDIZE_FNS,
    TRAIN_PERCENT,
    DataConfig,
    identity_standardize,
    libero_standardize,
    train_episodes,
)


def _check_rlds(cfg: DataConfig) -> None:
    """The folders, shards and the dataset's spec against its features.json (a mixture: every dataset's)."""
    if cfg.mix is not None:
        from vla.mixture import mixture_configs

        for sub, _ in mixture_configs(cfg):
            _check_rlds(sub)
        return
    from vla.dataset_specs import check_spec, dataset_spec
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
    check_spec(dataset_spec(cfg), cfg.dataset_dir)


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


def _check_split(cfg: DataConfig, root: Path, splits: list[str]) -> None:
    if cfg.split not in splits:
        raise ValueError(f"split {cfg.split!r} ({SPLITS[cfg.split]}) of {root} holds none of its {len(splits)} "
                         "episodes; the val split needs 20 or more episodes in all")  # fmt: skip


def check_data(cfg: DataConfig) -> None:
    """Every check of the data that needs neither TensorFlow nor weights; raises one clear error naming the path and
    the fix (the RLDS folders and shards, each dataset's spec against its features.json, a video export's index, a
    frame store's index and files, and that `cfg.split` of an export or store holds episodes)."""
    if cfg.source not in DATA_SOURCES:
        raise ValueError(f"data source {cfg.source!r} is not one of {DATA_SOURCES}")
    if cfg.source == "rlds":
        _check_rlds(cfg)
    elif cfg.source == "video_frames":
        from vla.video_frames import read_index

        root = _frames_dir(cfg)
        index = read_index(root)
        _check_image_size(cfg, root, int(index["image_size"]))
        _check_split(cfg, root, [str(split) for split in index["splits"]])
    elif cfg.source == "frames":
        from vla.frame_store import read_store_index

        root = _frames_dir(cfg)
        index = read_store_index(root)
        _check_image_size(cfg, root, int(index["image_size"]))
        _check_split(cfg, root, [episode["split"] for episode in index["episodes"]])


def make_dataset(cfg: DataConfig, sequence_builder, image_processor, *, rank: int | None = 0,
                 world_size: int | None = 1, device=None):  # fmt: skip
    """The frame stream of `cfg.source` (see the module docstring for its interface). `rank` / `world_size` None:
    torch.distributed's. `device`: where video_frames / frames put, augment and normalize pixels (default CPU)."""
    if cfg.source == "rlds" and cfg.mix is not None:
        from vla.mixture import MixtureDataset, mixture_configs
        from vla.rlds import RLDSDataset

        subs = mixture_configs(cfg)
        streams = [RLDSDataset(sub, sequence_builder, image_processor, rank=rank, world_size=world_size)
                   for sub, _ in subs]  # fmt: skip
        return MixtureDataset(streams, [w for _, w in subs], split=cfg.split, seed=cfg.seed,
                              balance_weights=cfg.balance_weights, label=cfg.mix, sequence_builder=sequence_builder,
                              image_processor=image_processor)  # fmt: skip
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
                       chunk_size=cfg.chunk_size, max_hold=cfg.max_hold)  # fmt: skip
    if cfg.source == "synthetic":
        from vla.synthetic_data import SyntheticDataset

        return SyntheticDataset(sequence_builder, image_processor, seed=cfg.seed, rank=rank, world_size=world_size,
                                image_size=cfg.image_size)  # fmt: skip
    raise ValueError(f"data source {cfg.source!r} is not one of {DATA_SOURCES}")

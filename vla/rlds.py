"""RLDS datasets stored by tensorflow-datasets in the layout of OpenVLA's `modified_libero_rlds`: the writer, the
dataset checks, the statistics cache, and a torch `IterableDataset` of model-ready frames (reference §2, §9).

TensorFlow is imported inside functions only: `import vla.rlds` stays light and safe for LIBERO simulation workers.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vla.data_config import (  # noqa: F401  (SPLITS, standardization and RLDS_VERSION re-exported for older imports)
    RLDS_VERSION,
    SPLITS,
    STANDARDIZE_FNS,
    TRAIN_PERCENT,
    DataConfig,
    identity_standardize,
    libero_standardize,
)
from vla.files import check_tfrecord
from vla.frame_stream import FrameStream
from vla.normalization import (
    LIBERO_ACTION_MASK,
    dataset_statistics,
    load_dataset_statistics,
    normalize_actions,
    save_dataset_statistics,
    write_json_atomic,
)
from vla.tf_import import import_tf  # also re-exported: older code imports it from here

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (256, 256, 3)  # the regenerated LIBERO demos render 256x256 (reference §9)
_EPISODE_ARRAYS = {  # Episode contract (docs/DESIGN.md): key -> (per-step shape, dtype)
    "image": (IMAGE_SHAPE, np.uint8),
    "wrist_image": (IMAGE_SHAPE, np.uint8),
    "state": ((8,), np.float32),
    "joint_state": ((7,), np.float32),
    "action": ((7,), np.float32),
}


def rlds_features():
    """The tfds features of moojink/rlds_dataset_builder's LIBERO datasets (reference §9)."""
    _, tfds = import_tf()
    feat = tfds.features
    image = {"shape": IMAGE_SHAPE, "dtype": np.uint8, "encoding_format": "jpeg"}
    return feat.FeaturesDict(
        {
            "steps": feat.Dataset(
                {
                    "observation": feat.FeaturesDict(
                        {
                            "image": feat.Image(**image, doc="Main camera RGB observation (rotated 180 deg)."),
                            "wrist_image": feat.Image(**image, doc="Wrist camera RGB observation (rotated 180 deg)."),
                            "state": feat.Tensor(shape=(8,), dtype=np.float32, doc="EEF pos, axis-angle, gripper."),
                            "joint_state": feat.Tensor(shape=(7,), dtype=np.float32, doc="Robot joint angles."),
                        }
                    ),
                    "action": feat.Tensor(shape=(7,), dtype=np.float32, doc="EEF delta action, gripper -1 open."),
                    "discount": feat.Scalar(dtype=np.float32, doc="Discount, 1.0."),
                    "reward": feat.Scalar(dtype=np.float32, doc="1 on the final step of a successful demo."),
                    "is_first": feat.Scalar(dtype=np.bool_, doc="True on the first step of the episode."),
                    "is_last": feat.Scalar(dtype=np.bool_, doc="True on the last step of the episode."),
                    "is_terminal": feat.Scalar(dtype=np.bool_, doc="True on the last step of a demo."),
                    "language_instruction": feat.Text(doc="Language instruction."),
                }
            ),
            "episode_metadata": feat.FeaturesDict({"file_path": feat.Text(doc="Path to the original data file.")}),
        }
    )


def _episode_example(episode: dict, index: int) -> dict:
    """An Episode dict (docs/DESIGN.md) -> one tfds example; rewards/flags as the RLDS builder sets them for demos."""
    missing = [k for k in (*_EPISODE_ARRAYS, "language_instruction", "file_path") if k not in episode]
    if missing:
        raise ValueError(f"episode {index} lacks {missing}; an Episode needs {list(_EPISODE_ARRAYS)} + text keys")
    arrays = {}
    for key, (shape, dtype) in _EPISODE_ARRAYS.items():
        value = np.asarray(episode[key])
        if value.ndim != len(shape) + 1 or value.shape[1:] != shape or value.shape[0] == 0:
            raise ValueError(
                f"episode {index}: {key!r} has shape {value.shape}, expected (T>0, {', '.join(map(str, shape))})"
            )
        if dtype == np.uint8 and value.dtype != np.uint8:
            raise ValueError(f"episode {index}: {key!r} is {value.dtype}; images must be uint8")
        arrays[key] = value.astype(dtype, copy=False)
    lengths = {key: len(v) for key, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"episode {index}: arrays disagree on the number of steps: {lengths}")
    steps = len(arrays["action"])
    last = np.arange(steps) == steps - 1
    return {
        "steps": {
            "observation": {k: arrays[k] for k in ("image", "wrist_image", "state", "joint_state")},
            "action": arrays["action"],
            "discount": np.ones(steps, np.float32),
            "reward": last.astype(np.float32),
            "is_first": np.arange(steps) == 0,
            "is_last": last,
            "is_terminal": last,
            "language_instruction": [str(episode["language_instruction"])] * steps,
        },
        "episode_metadata": {"file_path": str(episode["file_path"])},
    }


def write_rlds_dataset(episodes: Iterable[dict], out_dir: Path, dataset_name: str, version: str = RLDS_VERSION) -> Path:
    """Write Episode dicts (docs/DESIGN.md) as a tfds RLDS dataset `<out_dir>/<dataset_name>/<version>/`
    (dataset_info.json, features.json, `<dataset_name>-train.tfrecord-*`), one "train" split; returns that dir.

    Episodes are consumed lazily. Their order on disk is tfds's key-hash shuffle, as in the official datasets, so
    the 95 % / 5 % split mixes tasks. Refuses to overwrite an existing dataset.
    """
    target = Path(out_dir) / dataset_name / version
    if target.exists():
        raise FileExistsError(f"{target} already exists; delete it or write to another out_dir / dataset_name")
    iterator = iter(episodes)
    first = next(iterator, None)
    if first is None:
        raise ValueError(f"no episodes to write for {dataset_name!r}")
    _, tfds = import_tf()
    examples = ((i, _episode_example(ep, i)) for i, ep in enumerate(itertools.chain([first], iterator)))
    builder = tfds.dataset_builders.AdhocBuilder(
        name=dataset_name,
        version=version,
        features=rlds_features(),
        split_datasets={"train": examples},
        data_dir=Path(out_dir),
        description="LIBERO demonstrations in the layout of OpenVLA's modified_libero_rlds.",
    )
    with tempfile.TemporaryDirectory() as downloads:  # tfds wants a download dir; keep it out of out_dir
        builder.download_and_prepare(download_dir=downloads)
    logger.info("wrote %d episodes to %s", builder.info.splits["train"].num_examples, target)
    return target


def read_rlds_episodes(dataset_dir: Path, split: str = "train") -> Iterator[dict]:
    """Episode dicts (docs/DESIGN.md, images decoded) of a written dataset `<root>/<name>/<version>/`, in the order
    stored; `split` is any tfds split string ("train", "train[:95%]", ...)."""
    dataset_dir = check_rlds_dir(Path(dataset_dir))
    tf, tfds = import_tf()
    builder = tfds.builder_from_directory(str(dataset_dir))
    read_config = tfds.ReadConfig(try_autocache=False, interleave_cycle_length=1)  # one shard after another
    episodes = builder.as_dataset(split=split, decoders={"steps": tfds.decode.SkipDecoding()}, read_config=read_config)

    def decode(jpegs) -> np.ndarray:  # (T,) JPEG bytes -> (T, H, W, 3) uint8
        return np.stack([tf.io.decode_jpeg(jpeg).numpy() for jpeg in jpegs])

    for episode in episodes:
        steps, obs = episode["steps"], episode["steps"]["observation"]
        yield {
            "image": decode(obs["image"]),
            "wrist_image": decode(obs["wrist_image"]),
            "state": obs["state"].numpy(),
            "joint_state": obs["joint_state"].numpy(),
            "action": steps["action"].numpy(),
            "language_instruction": steps["language_instruction"][0].numpy().decode(),
            "file_path": episode["episode_metadata"]["file_path"].numpy().decode(),
            "reward": steps["reward"].numpy(),
            "is_first": steps["is_first"].numpy(),
            "is_last": steps["is_last"].numpy(),
            "is_terminal": steps["is_terminal"].numpy(),
        }


RLDSConfig = DataConfig  # the old name: RLDS datasets are read with the one data config (source="rlds")


_FIX = "download openvla/modified_libero_rlds (HF datasets) or write one with scripts/collect_demos.py"


def check_rlds_dir(dataset_dir: Path) -> Path:
    """Cheap (no TF) checks of `<root>/<name>/<version>/`: raises ONE FileNotFoundError / ValueError that names
    the path and what is missing (folder, dataset_info.json, features.json, TFRecord shards)."""
    dataset_dir = Path(dataset_dir)
    info_path = dataset_dir / "dataset_info.json"
    if not dataset_dir.parent.is_dir():
        raise FileNotFoundError(f"no dataset folder {dataset_dir.parent}: expected {info_path}; {_FIX}")
    if not dataset_dir.is_dir():
        versions = sorted(p.name for p in dataset_dir.parent.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"no version folder {dataset_dir} (versions found: {versions or 'none'}): expected {info_path}; {_FIX}"
        )
    for required in (info_path, dataset_dir / "features.json"):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing: the dataset is incomplete; {_FIX}")
    try:
        info = json.loads(info_path.read_text())
        name, fmt = info["name"], info.get("fileFormat", "tfrecord")
        shards = [(split["name"], len(split["shardLengths"])) for split in info["splits"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{info_path} is corrupt ({type(err).__name__}: {err}); re-download or rewrite it") from None
    if name != dataset_dir.parent.name:  # a renamed folder: tfds would read `name`'s shards under another name
        raise ValueError(
            f"{dataset_dir.parent} holds the dataset {name!r} (dataset_info.json, shards {name}-*), not "
            f"{dataset_dir.parent.name!r}: set data.dataset_name {name!r} with the folder named so, or rewrite it"
        )
    expected = [f"{name}-{split}.{fmt}-{i:05d}-of-{n:05d}" for split, n in shards for i in range(n)]
    missing = [f for f in expected if not (dataset_dir / f).is_file()]
    if not expected or missing:
        what = f"{len(missing)} of {len(expected)} shards, e.g. {missing[0]}" if missing else "any shard"
        raise FileNotFoundError(f"{dataset_dir} lacks {what} (listed in dataset_info.json); {_FIX}")
    if fmt == "tfrecord":
        for shard in expected:  # framing only (one seek per episode): a truncated download fails here, not mid-run
            check_tfrecord(dataset_dir / shard, f"re-download that shard; {_FIX}")
    return dataset_dir


def _statistics_key(cfg: DataConfig) -> str:
    """Cache key over the dataset's info file and the standardization code (OpenVLA hashes builder info + the
    transform's source)."""
    digest = hashlib.sha256((cfg.dataset_dir / "dataset_info.json").read_bytes())
    digest.update(cfg.dataset_name.encode())
    digest.update(inspect.getsource(STANDARDIZE_FNS[cfg.standardize]).encode())
    digest.update(repr(LIBERO_ACTION_MASK).encode())
    return digest.hexdigest()[:16]


def _read_actions(builder, split: str) -> list[np.ndarray]:
    """Raw actions (T, 7) of every episode of a tfds split, images left encoded."""
    tf, tfds = import_tf()
    if builder.info.splits[split].num_examples == 0:
        return []
    episodes = builder.as_dataset(
        split=split, decoders={"steps": tfds.decode.SkipDecoding()}, read_config=tfds.ReadConfig(try_autocache=False)
    )
    return list(tfds.as_numpy(episodes.map(lambda ep: ep["steps"]["action"], num_parallel_calls=tf.data.AUTOTUNE)))


def compute_statistics(cfg: DataConfig, builder) -> tuple[dict, dict[str, int]]:
    """One pass over ALL episodes (train and val, as OpenVLA): statistics of the standardized actions, and the
    number of frames in each split."""
    actions = {name: _read_actions(builder, split) for name, split in SPLITS.items()}
    episodes = actions["train"] + actions["val"]
    stats = dataset_statistics(STANDARDIZE_FNS[cfg.standardize](np.concatenate(episodes)), len(episodes))
    return stats, {name: sum(len(a) for a in eps) for name, eps in actions.items()}


def load_statistics(cfg: DataConfig, builder) -> tuple[dict, dict[str, int]]:
    """(statistics entry, frames per split): computed once, then read back from `dataset_statistics_<key>.json`
    and `split_frames_<key>.json` in the dataset dir (or in `cfg.cache_dir` when that dir is read-only)."""
    key = _statistics_key(cfg)
    folders = (cfg.dataset_dir, Path(cfg.cache_dir) if cfg.cache_dir else Path.home() / ".cache" / "vla")
    names = (f"dataset_statistics_{key}.json", f"split_frames_{key}.json")
    for folder in folders:
        if all((folder / n).is_file() for n in names):
            logger.info("using cached dataset statistics %s", folder / names[0])
            stats = load_dataset_statistics(folder / names[0])[cfg.dataset_name]
            return stats, json.loads((folder / names[1]).read_text())
    logger.info("computing action statistics over all episodes of %s", cfg.dataset_dir)
    stats, frames = compute_statistics(cfg, builder)
    for folder in folders:
        try:
            save_dataset_statistics(folder / names[0], {cfg.dataset_name: stats})
            write_json_atomic(folder / names[1], frames)
            break
        except OSError as err:  # e.g. a read-only download: fall back to the cache dir
            logger.warning("cannot cache statistics in %s (%s)", folder, err)
    return stats, frames


class RLDSDataset(FrameStream):
    """Model-ready frames of an RLDS dataset: `pixel_values (6, S, S) float32`, `input_ids (L,)`, `labels (L,)` int64.

    Train: the first 95 % of episodes, repeated forever, frames shuffled (`cfg.shuffle_buffer_size`, `cfg.seed`),
    augmented when `cfg.image_aug`. Val: the last 5 %, one pass in storage order. Frames are dealt round-robin to
    DDP ranks (`rank`/`world_size`, default from torch.distributed). The stream is a pure function of the seed, so
    `load_state_dict({"frames_consumed": n})` resumes exactly (skipping costs a read of n records, no decoding).
    Use `DataLoader(num_workers=0)`: tf.data already decodes in parallel threads.

    `frames()` yields the frames before the model's processors; `dataset_statistics` is `{dataset_name: stats}`.
    """

    def __init__(
        self,
        cfg: DataConfig,
        sequence_builder,
        image_processor,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        check_rlds_dir(cfg.dataset_dir)
        super().__init__(sequence_builder, image_processor, seed=cfg.seed, rank=rank, world_size=world_size)
        self.cfg, self.dataset_name = cfg, cfg.dataset_name
        _, tfds = import_tf()
        self._builder = tfds.builder_from_directory(str(cfg.dataset_dir))
        steps = self._builder.info.features["steps"]
        for key, where, available in (
            (cfg.image_key, "steps/observation", steps["observation"].keys()),
            (cfg.language_key, "steps", steps.keys()),
        ):
            if key not in available:
                raise ValueError(f"{cfg.dataset_dir} has no {where}/{key}; set the key to one of {sorted(available)}")
        stats, split_frames = load_statistics(cfg, self._builder)
        self.dataset_statistics = {cfg.dataset_name: stats}  # what the run dir saves as dataset_statistics.json
        self.num_episodes = self._builder.info.splits[SPLITS[cfg.split]].num_examples
        self.num_frames = split_frames[cfg.split]  # all ranks together; one rank sees ~num_frames / world_size
        if self.num_frames == 0:
            raise ValueError(f"split {cfg.split!r} ({SPLITS[cfg.split]}) of {cfg.dataset_dir} holds no episodes")

    def _tf_frames(self, start: int):
        """tf.data of this rank's frames from position `start`: image uint8 (S, S, 3), raw action (7,), text."""
        tf, tfds = import_tf()
        from vla.augment import augment_image
        from vla.image_ops import resize_image

        cfg, train = self.cfg, self.cfg.split == "train"
        cycle = 16 if train else 1  # val: shard after shard, in storage order
        read_config = tfds.ReadConfig(try_autocache=False, shuffle_seed=cfg.seed, interleave_cycle_length=cycle)
        skip_decoding = {"steps": tfds.decode.SkipDecoding()}  # decode only the one camera, later
        episodes = self._builder.as_dataset(
            split=SPLITS[cfg.split], shuffle_files=train, read_config=read_config, decoders=skip_decoding
        )

        def select(episode):
            steps = episode["steps"]
            image, text = steps["observation"][cfg.image_key], steps[cfg.language_key]
            return {"image": image, "action": steps["action"], "instruction": text}

        frames = episodes.map(select).unbatch()
        frames = frames.shard(self.world_size, self.rank)
        if train:  # shuffle after repeat (as OpenVLA) and before decoding, so the buffer holds JPEG bytes
            # capped at this rank's frames: a full shuffle either way, without holding several epochs of JPEGs
            buffer = min(cfg.shuffle_buffer_size, -(-self.num_frames // self.world_size))
            frames = frames.repeat().shuffle(buffer, seed=cfg.seed)
        frames = frames.enumerate().skip(start)

        def decode(index, frame):
            image = tf.io.decode_image(frame["image"], channels=3, expand_animations=False)
            image = resize_image(image, cfg.image_size, backend="tf")  # (S, S, 3) uint8
            if train and cfg.image_aug:  # one seed per stream position: a resumed stream augments identically
                position = index * self.world_size + self.rank
                image = augment_image(image, tf.stack([tf.constant(cfg.seed, tf.int64), position]))
            return {**frame, "image": image}

        options = tf.data.Options()
        options.deterministic = True
        return frames.map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE).with_options(options)

    def frames(self) -> Iterator[dict[str, Any]]:
        """This rank's frames before the model's processors: `image (S, S, 3) uint8`, `action (7,) float32`
        (standardized, BOUNDS_Q99-normalized with `self.dataset_statistics` as set when iteration starts, so a
        caller may substitute a checkpoint's statistics), `instruction: str`. Counts `frames_consumed`."""
        self._refuse_workers("decodes with tf.data threads already")  # TF does not survive a fork; replays the data
        _, tfds = import_tf()
        standardize, stats = STANDARDIZE_FNS[self.cfg.standardize], self.dataset_statistics[self.cfg.dataset_name]
        self.frames_consumed = self._start
        for frame in tfds.as_numpy(self._tf_frames(self._start)):
            self.frames_consumed += 1
            yield {
                "image": frame["image"],
                "action": normalize_actions(standardize(frame["action"]), stats["action"]),
                "instruction": frame["instruction"].decode(),
            }

"""Checking, writing and reading RLDS (tfds) datasets: the folder check (`check_rlds_dir`), the modified_libero_rlds
layout (`write_rlds_dataset`, `read_rlds_episodes`, the Episode dicts of docs/DESIGN.md) and any other schema
(`write_rlds_examples`).

TensorFlow is imported inside functions only.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from vla.data_config import RLDS_VERSION
from vla.files import check_tfrecord
from vla.tf_import import import_tf

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (256, 256, 3)  # the regenerated LIBERO demos render 256x256
_EPISODE_ARRAYS = {  # Episode contract (docs/DESIGN.md): key -> (per-step shape, dtype)
    "image": (IMAGE_SHAPE, np.uint8),
    "wrist_image": (IMAGE_SHAPE, np.uint8),
    "state": ((8,), np.float32),
    "joint_state": ((7,), np.float32),
    "action": ((7,), np.float32),
}


_FIX = "download openvla/modified_libero_rlds (HF datasets) or write one with scripts/collect_demos.py"


_RENAMED_DOWNLOADS = {"bridge_orig": ("bridge_dataset",)}  # folder -> builder names OpenVLA's instructions rename


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
    # A folder holding another dataset than its name says would train (and save statistics) under the wrong name.
    if name != dataset_dir.parent.name and name not in _RENAMED_DOWNLOADS.get(dataset_dir.parent.name, ()):
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


def rlds_features():
    """The tfds features of moojink/rlds_dataset_builder's LIBERO datasets."""
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
    examples = (_episode_example(ep, i) for i, ep in enumerate(itertools.chain([first], iterator)))
    description = "LIBERO demonstrations in the layout of OpenVLA's modified_libero_rlds."
    return write_rlds_examples(examples, out_dir, dataset_name, rlds_features(), version, description)


def write_rlds_examples(examples: Iterable[dict], out_dir: Path, dataset_name: str, features, version: str = RLDS_VERSION,
                        description: str = "") -> Path:  # fmt: skip
    """Write tfds examples (nested dicts matching `features`, a `tfds.features.FeaturesDict` with a `steps`
    `Dataset`) as an RLDS dataset `<out_dir>/<dataset_name>/<version>/` with one "train" split; any schema, e.g. an
    Open X-Embodiment dataset's. Refuses to overwrite an existing dataset."""
    target = Path(out_dir) / dataset_name / version
    if target.exists():
        raise FileExistsError(f"{target} already exists; delete it or write to another out_dir / dataset_name")
    _, tfds = import_tf()
    builder = tfds.dataset_builders.AdhocBuilder(
        name=dataset_name,
        version=version,
        features=features,
        split_datasets={"train": enumerate(examples)},
        data_dir=Path(out_dir),
        description=description,
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

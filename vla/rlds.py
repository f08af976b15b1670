"""RLDS datasets stored by tensorflow-datasets: the statistics cache and a torch `IterableDataset` of model-ready
frames. What each dataset's frames are (camera, instruction, action) is its `vla.dataset_specs.DatasetSpec`; the
folder check, the writer and the episode reader live in `vla.rlds_io` (which never imports this module).

TensorFlow is imported inside functions only: `import vla.rlds` stays light and safe for LIBERO simulation workers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vla import dataset_transforms
from vla.data_config import RLDS_VERSION, SPLITS, DataConfig, libero_standardize  # noqa: F401  (re-exported for older imports)
from vla.dataset_specs import DatasetSpec, check_spec, dataset_spec
from vla.frame_stream import FrameStream
from vla.normalization import (
    dataset_statistics,
    load_dataset_statistics,
    normalize_actions,
    save_dataset_statistics,
    write_json_atomic,
)
from vla.rlds_io import (  # noqa: F401  (re-exported: the writer, the reader and the checks used to live here)
    IMAGE_SHAPE,
    check_rlds_dir,
    read_rlds_episodes,
    rlds_features,
    write_rlds_dataset,
    write_rlds_examples,
)
from vla.tf_import import import_tf  # also re-exported: older code imports it from here

logger = logging.getLogger(__name__)

RLDSConfig = DataConfig  # the old name: RLDS datasets are read with the one data config (source="rlds")


def _statistics_key(cfg: DataConfig, spec: DatasetSpec) -> str:
    """Cache key over the dataset's info file, the spec and the standardization code (OpenVLA hashes builder info +
    the transform's source)."""
    digest = hashlib.sha256((cfg.dataset_dir / "dataset_info.json").read_bytes())
    digest.update(cfg.dataset_name.encode())
    digest.update(spec.fingerprint().encode())
    digest.update(inspect.getsource(dataset_transforms).encode())
    return digest.hexdigest()[:16]


def _steps_field(steps: dict, key: str):
    """`steps/<key>` ("a/b" walks nested dicts)."""
    value = steps
    for part in key.split("/"):
        value = value[part]
    return value


def episode_actions(spec: DatasetSpec, steps: dict):
    """tf ops: (standardized actions (N, 7) float32, kept step indices (N,) int64) of one episode's `steps`."""
    tf, _ = import_tf()
    parts = []
    for key, index in spec.action_parts():
        value = tf.cast(_steps_field(steps, key), tf.float32)
        value = tf.reshape(value, [tf.shape(value)[0], -1])  # scalars per step -> (T, 1)
        parts.append(value[:, index])
    inputs = [tf.concat(parts, axis=1)]
    if spec.needs_state:
        inputs.append(tf.cast(_steps_field(steps, spec.state_key), tf.float32))

    def standardize(action, state=None):
        return dataset_transforms.standardize_episode([action], state, gripper=spec.gripper,
                                                      skip_first_steps=spec.skip_first_steps, transform=spec.transform)  # fmt: skip

    actions, kept = tf.numpy_function(standardize, inputs, [tf.float32, tf.int64], stateful=False)
    return tf.ensure_shape(actions, [None, 7]), tf.ensure_shape(kept, [None])


def _read_actions(builder, split: str, spec: DatasetSpec) -> list[np.ndarray]:
    """Standardized actions (N, 7) of every episode of a tfds split, images left encoded."""
    tf, tfds = import_tf()
    if builder.info.splits[split].num_examples == 0:
        return []
    episodes = builder.as_dataset(
        split=split, decoders={"steps": tfds.decode.SkipDecoding()}, read_config=tfds.ReadConfig(try_autocache=False)
    )
    actions = episodes.map(lambda ep: episode_actions(spec, ep["steps"])[0], num_parallel_calls=tf.data.AUTOTUNE)
    return list(tfds.as_numpy(actions))


def compute_statistics(cfg: DataConfig, builder, spec: DatasetSpec | None = None) -> tuple[dict, dict[str, int]]:
    """One pass over ALL episodes (train and val, as OpenVLA): statistics of the standardized actions (normalized
    dims: the spec's mask), and the number of frames in each split."""
    spec = spec or dataset_spec(cfg)
    actions = {name: _read_actions(builder, split, spec) for name, split in SPLITS.items()}
    episodes = actions["train"] + actions["val"]
    frames = np.concatenate(episodes) if episodes else np.zeros((0, 7), np.float32)
    if len(frames) == 0:
        raise ValueError(f"dataset {cfg.dataset_name!r} ({cfg.dataset_dir}) has no actions after standardization")
    stats = dataset_statistics(frames, len(episodes), mask=spec.normalize_mask)
    return stats, {name: sum(len(a) for a in eps) for name, eps in actions.items()}


def load_statistics(cfg: DataConfig, builder, spec: DatasetSpec | None = None) -> tuple[dict, dict[str, int]]:
    """(statistics entry, frames per split): computed once, then read back from `dataset_statistics_<key>.json`
    and `split_frames_<key>.json` in the dataset dir (or in `cfg.cache_dir` when that dir is read-only)."""
    spec = spec or dataset_spec(cfg)
    key = _statistics_key(cfg, spec)
    folders = (cfg.dataset_dir, Path(cfg.cache_dir) if cfg.cache_dir else Path.home() / ".cache" / "vla")
    names = (f"dataset_statistics_{key}.json", f"split_frames_{key}.json")
    for folder in folders:
        if all((folder / n).is_file() for n in names):
            logger.info("using cached dataset statistics %s", folder / names[0])
            stats = load_dataset_statistics(folder / names[0])[cfg.dataset_name]
            return stats, json.loads((folder / names[1]).read_text())
    logger.info("computing action statistics over all episodes of %s", cfg.dataset_dir)
    stats, frames = compute_statistics(cfg, builder, spec)
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

    What a frame is (camera, instruction, 7-d action) is the dataset's spec (`vla.dataset_specs.dataset_spec(cfg)`).
    Train: the first 95 percent of episodes, repeated forever, frames shuffled (`cfg.shuffle_buffer_size`,
    `cfg.seed`), augmented when `cfg.image_aug`. Val: the rest, one pass in storage order. Frames are dealt
    round-robin to DDP ranks (`rank`/`world_size`, default from torch.distributed). The stream is a pure function of
    the seed, so `load_state_dict({"frames_consumed": n})` resumes exactly (skipping costs a read of n records, no
    decoding). Use `DataLoader(num_workers=0)`: tf.data already decodes in parallel threads.

    `frames()` yields the frames before the model's processors; `dataset_statistics` is `{dataset_name: stats}`.
    """

    def __init__(
        self,
        cfg: DataConfig,
        sequence_builder,
        image_processor,
        rank: int | None = None,
        world_size: int | None = None,
        spec: DatasetSpec | None = None,
    ) -> None:
        check_rlds_dir(cfg.dataset_dir)
        self.spec = spec or dataset_spec(cfg)
        check_spec(self.spec, cfg.dataset_dir)
        super().__init__(sequence_builder, image_processor, seed=cfg.seed, rank=rank, world_size=world_size)
        self.cfg, self.dataset_name = cfg, cfg.dataset_name
        _, tfds = import_tf()
        self._builder = tfds.builder_from_directory(str(cfg.dataset_dir))
        stats, split_frames = load_statistics(cfg, self._builder, self.spec)
        self.dataset_statistics = {cfg.dataset_name: stats}  # what the run dir saves as dataset_statistics.json
        self.num_episodes = self._builder.info.splits[SPLITS[cfg.split]].num_examples
        self.num_frames = split_frames[cfg.split]  # all ranks together; one rank sees ~num_frames / world_size
        if self.num_frames == 0:
            raise ValueError(
                f"split {cfg.split!r} ({SPLITS[cfg.split]}) of {cfg.dataset_dir} holds no episodes (or no frames after standardization)"
            )

    def _tf_frames(self, start: int):
        """tf.data of this rank's frames from position `start`: image uint8 (S, S, 3), standardized action (7,),
        text."""
        tf, tfds = import_tf()
        from vla.augment import augment_image
        from vla.image_ops import resize_image

        cfg, spec, train = self.cfg, self.spec, self.cfg.split == "train"
        cycle = 16 if train else 1  # val: shard after shard, in storage order
        read_config = tfds.ReadConfig(try_autocache=False, shuffle_seed=cfg.seed, interleave_cycle_length=cycle)
        skip_decoding = {"steps": tfds.decode.SkipDecoding()}  # decode only the one camera, later
        episodes = self._builder.as_dataset(
            split=SPLITS[cfg.split], shuffle_files=train, read_config=read_config, decoders=skip_decoding
        )

        def select(episode):
            steps = episode["steps"]
            actions, kept = episode_actions(spec, steps)
            image = tf.gather(steps["observation"][spec.image_key], kept)
            return {
                "image": image,
                "action": actions,
                "instruction": tf.gather(_steps_field(steps, spec.language_key), kept),
            }

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
        (standardized by the spec, BOUNDS_Q99-normalized with `self.dataset_statistics` as set when iteration starts,
        so a caller may substitute a checkpoint's statistics), `instruction: str`. Counts `frames_consumed`."""
        self._refuse_workers("decodes with tf.data threads already")  # TF does not survive a fork; replays the data
        _, tfds = import_tf()
        stats = self.dataset_statistics[self.dataset_name]
        self.frames_consumed = self._start
        for frame in tfds.as_numpy(self._tf_frames(self._start)):
            self.frames_consumed += 1
            yield {
                "image": frame["image"],
                "action": normalize_actions(frame["action"], stats["action"]),
                "instruction": frame["instruction"].decode(),
            }

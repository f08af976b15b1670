"""Training frames as H.264 videos: a one-time exporter from RLDS (needs TensorFlow) and a TF-free torch dataset that
decodes the export with PyAV and yields what `vla.rlds.RLDSDataset` yields, augmenting and normalizing on-device.

Export layout: `videos/<episode>.mp4` (libx264 yuv444p, the pre-augmentation frames), `index.npz`, and
`dataset_statistics.json` (`{dataset_name: stats}`, identical to `RLDSDataset.dataset_statistics`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.normalization import load_dataset_statistics, normalize_actions, save_dataset_statistics
from vla.rlds import SPLITS, STANDARDIZE_FNS, RLDSConfig, _rank_and_world, check_rlds_dir, import_tf, load_statistics

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_NAME = "index.npz"
STATS_NAME = "dataset_statistics.json"
VIDEO_DIR = "videos"
FPS = 20  # nominal: only the frames matter
_INDEX_KEYS = ("videos", "instructions", "lengths", "splits", "actions", "dataset_name", "standardize", "image_size")


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_video(path: Path, frames: np.ndarray, crf: int = 23) -> None:
    """uint8 (T, H, W, 3) -> an H.264 mp4 (libx264, yuv444p, `crf`, preset slow, one encoder thread so the bytes
    do not depend on the machine), encoded by imageio-ffmpeg."""
    import imageio.v2 as imageio

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"write_video expects uint8 (T>0, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    params = ["-crf", str(crf), "-preset", "slow", "-threads", "1"]
    writer = imageio.get_writer(
        str(path), fps=FPS, codec="libx264", quality=None, output_params=params, macro_block_size=1,
        pixelformat="yuv444p", ffmpeg_log_level="error",
    )  # fmt: skip
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def decode_video(path: Path, yuv: bool = False) -> np.ndarray:
    """An mp4 -> uint8 RGB (T, H, W, 3) decoded with PyAV (no ffmpeg binary needed); with `yuv`, its yuv444p planes
    (T, 3, H, W) instead: several times faster, and `yuv_to_rgb` turns them into the same RGB."""
    import av

    with av.open(str(path)) as container:
        if not yuv:
            return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
        frames = []
        for frame in container.decode(video=0):
            if (frame.format.name, frame.colorspace, frame.color_range) != _untagged_yuv444p():
                raise ValueError(f"{path} is not untagged yuv444p, as write_video writes: re-export it")
            frames.append(frame.to_ndarray().reshape(3, frame.height, frame.width))
        return np.stack(frames)


@functools.cache
def _untagged_yuv444p() -> tuple[str, int, int]:
    """Format, colorspace and range of the frames `_yuv_table` is measured on (= what write_video's files hold)."""
    import av

    frame = av.VideoFrame.from_ndarray(np.zeros((3, 2, 2), np.uint8), format="yuv444p")
    return frame.format.name, frame.colorspace, frame.color_range


@functools.cache
def _yuv_table(device: torch.device) -> torch.Tensor:
    """(256**3, 3) uint8: the RGB swscale (PyAV's `to_ndarray(format="rgb24")`) gives each Y, U, V of a yuv444p
    frame, measured by converting one frame that holds every combination. Per pixel, so exact for any frame."""
    import av

    levels = np.arange(256, dtype=np.uint8)
    planes = np.stack([g.reshape(4096, 4096) for g in np.meshgrid(levels, levels, levels, indexing="ij")])
    table = av.VideoFrame.from_ndarray(planes, format="yuv444p").to_ndarray(format="rgb24").reshape(-1, 3)
    return torch.from_numpy(table).to(device)


def yuv_to_rgb(planes: torch.Tensor) -> torch.Tensor:
    """uint8 yuv444p planes (B, 3, H, W) on any device -> uint8 RGB (B, H, W, 3) there, equal to PyAV's rgb24."""
    y, u, v = planes.int().unbind(1)
    index = (y << 16) | (u << 8) | v  # (B, H, W)
    return _yuv_table(planes.device).index_select(0, index.flatten()).view(*index.shape, 3)


def _read_episodes(cfg: RLDSConfig, builder) -> Iterator[tuple[str, np.ndarray, np.ndarray, str]]:
    """(split, frames (T, S, S, 3) uint8, raw actions (T, 7) float32, instruction) of every episode, train split
    then val split, each in storage order; frames decoded and resized exactly as `RLDSDataset` does before
    augmentation."""
    tf, tfds = import_tf()
    from vla.image_ops import resize_image

    size = cfg.image_size

    def frame(jpeg):  # RLDSDataset._tf_frames' decode
        return resize_image(tf.io.decode_image(jpeg, channels=3, expand_animations=False), size)

    def select(episode):
        steps = episode["steps"]
        spec = tf.TensorSpec((size, size, 3), tf.uint8)
        images = tf.map_fn(frame, steps["observation"][cfg.image_key], fn_output_signature=spec)
        return {"frames": images, "action": steps["action"], "instruction": steps[cfg.language_key]}

    read_config = tfds.ReadConfig(try_autocache=False, interleave_cycle_length=1)  # storage order
    for name, split in SPLITS.items():
        if builder.info.splits[split].num_examples == 0:
            continue
        episodes = builder.as_dataset(
            split=split, shuffle_files=False, read_config=read_config, decoders={"steps": tfds.decode.SkipDecoding()}
        )
        episodes = episodes.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)
        for episode in tfds.as_numpy(episodes):
            texts = {t.decode() for t in episode["instruction"]}
            if len(texts) != 1:
                raise ValueError(f"an episode of {cfg.dataset_dir} changes its instruction mid-way: {sorted(texts)}")
            yield name, episode["frames"], episode["action"].astype(np.float32), texts.pop()


def _encode(path: Path, frames: np.ndarray, crf: int) -> float:
    """Write one video and decode it back: the mean absolute error in grey levels."""
    write_video(path, frames, crf)
    decoded = decode_video(path)
    if decoded.shape != frames.shape:
        raise RuntimeError(f"{path} decodes to {decoded.shape}, expected {frames.shape}: the encoder changed frames")
    return float(np.abs(decoded.astype(np.int16) - frames).mean())


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not empty; delete it or pass another --out")


def export_video_frames(cfg: RLDSConfig, out_dir: Path, crf: int = 23) -> Path:
    """Every episode of `cfg.dataset_dir` (both splits, storage order) -> `out_dir` (layout in the module docstring).

    Frames are `resize_image(decode(jpeg), cfg.image_size)` of `cfg.image_key`, as `RLDSDataset` feeds them to
    augmentation; statistics are `load_statistics`' (cached in the dataset dir as `RLDSDataset` caches them).
    """
    _check_out_dir(Path(out_dir))
    check_rlds_dir(cfg.dataset_dir)
    _, tfds = import_tf()
    builder = tfds.builder_from_directory(str(cfg.dataset_dir))
    steps = builder.info.features["steps"]
    for key, available in ((cfg.image_key, steps["observation"].keys()), (cfg.language_key, steps.keys())):
        if key not in available:
            raise ValueError(f"{cfg.dataset_dir} has no {key!r}; set the key to one of {sorted(available)}")
    stats, _ = load_statistics(cfg, builder)
    return write_export(
        out_dir, _read_episodes(cfg, builder), cfg.dataset_name, stats, standardize=cfg.standardize, crf=crf
    )


def write_export(
    out_dir: Path,
    episodes: Iterable[tuple[str, np.ndarray, np.ndarray, str]],
    dataset_name: str,
    statistics: dict,
    *,
    standardize: str = "libero",
    crf: int = 23,
) -> Path:
    """Episodes `(split, frames (T, S, S, 3) uint8, raw actions (T, 7), instruction)` -> an export in `out_dir`
    (needs no TensorFlow). Written to `<out_dir>.tmp` and renamed at the end, so a crash never leaves a
    valid-looking export. `statistics` is the dataset's entry of dataset_statistics.json."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    if not 0 <= crf <= 51:
        raise ValueError(f"crf {crf} is outside libx264's [0, 51] (23 = default, lower = larger and closer)")
    if standardize not in STANDARDIZE_FNS:
        raise ValueError(f"standardize {standardize!r} is not one of {sorted(STANDARDIZE_FNS)}")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        logger.warning("removing %s, left by an interrupted export", tmp)
        shutil.rmtree(tmp)
    (tmp / VIDEO_DIR).mkdir(parents=True)
    try:
        index = _write_videos(episodes, tmp, crf)
        index |= {"dataset_name": dataset_name, "standardize": standardize}
        np.savez(tmp / INDEX_NAME, **index, crf=crf, format_version=FORMAT_VERSION)
        save_dataset_statistics(tmp / STATS_NAME, {dataset_name: statistics})
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %d episodes (%d frames) to %s", len(index["videos"]), index["lengths"].sum(), out_dir)
    return out_dir


def _write_videos(episodes, root: Path, crf: int) -> dict[str, np.ndarray]:
    """Encode every episode into `root/videos/` on a thread pool (one ffmpeg process each); the index arrays."""
    records, errors, actions, sizes = [], [], [], set()
    workers = _threads()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        in_flight: collections.deque = collections.deque()
        for i, (split, frames, action, instruction) in enumerate(episodes):
            if split not in SPLITS or len(action) != len(frames) or np.shape(action)[1:] != (7,):
                raise ValueError(f"episode {i}: split {split!r}, {len(frames)} frames, actions {np.shape(action)}")
            video = f"{VIDEO_DIR}/{i:06d}.mp4"
            in_flight.append(pool.submit(_encode, root / video, frames, crf))
            records.append((video, instruction, len(frames), split))
            actions.append(action)
            sizes.add(frames.shape[1:])
            while len(in_flight) > 2 * workers or (in_flight and in_flight[0].done()):  # bound memory, fail early
                errors.append(in_flight.popleft().result())
        errors.extend(future.result() for future in in_flight)
    if not records:
        raise ValueError("no episodes to export")
    if len(sizes) != 1 or next(iter(sizes))[0] != next(iter(sizes))[1]:
        raise ValueError(f"frames must be square and of one size across episodes, got {sorted(sizes)}")
    videos, instructions, lengths, splits = zip(*records, strict=True)
    return {
        "videos": np.array(videos),
        "instructions": np.array(instructions),
        "lengths": np.array(lengths, np.int64),
        "splits": np.array(splits),
        "actions": np.concatenate(actions).astype(np.float32),  # (N, 7) raw, episodes concatenated
        "mean_abs_error": np.array(errors, np.float32),  # per episode, decoded video vs the exact frames
        "image_size": next(iter(sizes))[0],
    }


def _fix(root: Path) -> str:
    return f"run scripts/export_video_frames.py --data_root_dir <rlds root> --dataset_name <name> --out {root}"


def read_index(root: Path) -> dict[str, np.ndarray]:
    """The arrays of `root/index.npz`; one FileNotFoundError naming the path and the fix when the export is missing
    or incomplete."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no video-frame export at {root}: {_fix(root)}")
    for name in (INDEX_NAME, STATS_NAME):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} is missing (incomplete export): delete {root} and {_fix(root)}")
    with np.load(root / INDEX_NAME, allow_pickle=False) as data:
        index = {key: data[key] for key in data.files}
    missing = [key for key in _INDEX_KEYS if key not in index]
    if missing or int(index.get("format_version", -1)) != FORMAT_VERSION:
        raise ValueError(f"{root / INDEX_NAME} lacks {missing} or has another format version: re-export; {_fix(root)}")
    return index


def describe_export(root: Path) -> dict[str, Any]:
    """Frames, episodes per split, bytes on disk and the worst per-episode mean abs error of an export."""
    index = read_index(root)
    size = sum((Path(root) / v).stat().st_size for v in index["videos"])
    return {
        "frames": int(index["lengths"].sum()),
        "episodes": len(index["videos"]),
        **{f"{split}_episodes": int((index["splits"] == split).sum()) for split in SPLITS},
        "bytes": int(size),
        "max_mean_abs_error": float(index["mean_abs_error"].max()),
    }


class VideoFrameDataset(torch.utils.data.IterableDataset):
    """`RLDSDataset`'s stream read from a video-frame export, without TensorFlow: `pixel_values (6, S, S) float32`
    on `device`, `input_ids (L,)`, `labels (L,)` int64.

    All of this rank's frames (frames of the split dealt round-robin to ranks, as `RLDSDataset`) are decoded once at
    construction into one uint8 tensor. Train: endless, each epoch a permutation drawn from (seed, rank, epoch);
    chunks of `chunk_size` stream positions go to `device`, are augmented there (`vla.augment.augment_batch`, its
    generator seeded by (seed, rank, chunk)) when `image_aug`, and normalized by `image_processor.normalize_batch`.
    Val: one pass in storage order, never augmented. The stream is a pure function of the seed, so `skip(n)` /
    `load_state_dict` resume exactly. Use `DataLoader(num_workers=0)`.
    """

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
        device: str | torch.device = "cpu",
        chunk_size: int = 256,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {sorted(SPLITS)}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.root, self.split, self.seed, self.chunk_size = Path(root), split, seed, chunk_size
        self.sequence_builder, self.image_processor = sequence_builder, image_processor
        self.device = torch.device(device)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        index = read_index(self.root)
        self.dataset_name, self.standardize = str(index["dataset_name"]), str(index["standardize"])
        self.dataset_statistics = load_dataset_statistics(self.root / STATS_NAME)
        if self.dataset_name not in self.dataset_statistics:
            raise ValueError(f"{self.root / STATS_NAME} has no entry {self.dataset_name!r}: re-export; {_fix(root)}")
        size = int(index["image_size"])
        if getattr(image_processor, "image_size", size) != size:
            raise ValueError(
                f"{self.root} holds {size}x{size} frames but the image processor expects {image_processor.image_size}"
                f"; re-export with image_size={image_processor.image_size} or use a matching processor"
            )
        episodes = np.flatnonzero(index["splits"] == split)
        videos = [self.root / str(v) for v in index["videos"][episodes]]
        missing = [str(v) for v in videos if not v.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} videos of {self.root} are missing, e.g. {missing[0]}: {_fix(root)}"
            )
        lengths = index["lengths"]
        self.num_episodes, self.num_frames = len(episodes), int(lengths[episodes].sum())  # all ranks together
        if self.num_frames == 0:
            raise ValueError(f"split {split!r} of {self.root} holds no episodes")
        starts = np.concatenate([[0], np.cumsum(lengths)])
        mine = np.arange(self.rank, self.num_frames, self.world_size)  # this rank's frames, split order
        if len(mine) == 0:
            raise ValueError(f"rank {self.rank} of {self.world_size} gets none of the {self.num_frames} {split} frames")
        split_actions = np.concatenate([index["actions"][starts[e] : starts[e + 1]] for e in episodes])
        self._raw_actions = split_actions[mine]  # (n, 7)
        self._episode = np.repeat(np.arange(len(episodes)), lengths[episodes])[mine]  # (n,) -> instruction
        self._instructions = [str(index["instructions"][e]) for e in episodes]
        self._augment = None
        if image_aug and split == "train":
            from vla.augment import augment_batch

            self._augment = augment_batch
        offsets = np.concatenate([[0], np.cumsum(lengths[episodes])])[:-1]
        self._frames = torch.from_numpy(self._decode(videos, offsets, lengths[episodes], size, len(mine)))  # YUV
        self._permutation_cache: tuple[int, np.ndarray] | None = None
        self._start = self.frames_consumed = 0

    def _decode(self, videos: list[Path], offsets, lengths, size: int, count: int) -> np.ndarray:
        """This rank's frames of every video, in split order, as yuv444p planes: uint8 (count, 3, S, S), videos decoded
        on threads (YUV -> RGB happens per chunk, on the device: PyAV's own conversion would take most of the time)."""
        out = np.empty((count, 3, size, size), np.uint8)
        rank, world = self.rank, self.world_size

        def one(j: int) -> None:
            first = (rank - offsets[j]) % world  # first frame of episode j dealt to this rank
            if first >= lengths[j]:
                return
            video = decode_video(videos[j], yuv=True)
            if video.shape != (lengths[j], 3, size, size):
                raise ValueError(
                    f"{videos[j]} decodes to {video.shape}, the index says ({lengths[j]}, 3, {size}, {size}): the "
                    f"export is corrupt; {_fix(self.root)}"
                )
            picked = video[first::world]
            position = (offsets[j] + first - rank) // world
            out[position : position + len(picked)] = picked

        with concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
            list(pool.map(one, range(len(videos))))
        return out

    def state_dict(self) -> dict[str, int]:
        keys = ("frames_consumed", "seed", "world_size", "chunk_size")  # chunking fixes the augmentation's seeds
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume after `state["frames_consumed"]` frames of this rank's stream (the next `iter` starts there)."""
        for key in ("seed", "world_size", "chunk_size"):
            if key in state and state[key] != self.state_dict()[key]:
                raise ValueError(
                    f"cannot resume a stream made with {key}={state[key]} with {key}={self.state_dict()[key]}"
                )
        self.skip(int(state["frames_consumed"]))

    def skip(self, frames: int) -> VideoFrameDataset:
        """Start the next iteration after `frames` frames of this rank's stream."""
        if frames < 0:
            raise ValueError(f"cannot skip {frames} frames")
        self._start = self.frames_consumed = frames
        return self

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._permutation_cache is None or self._permutation_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, 0, self.rank, epoch])
            self._permutation_cache = (epoch, rng.permutation(len(self._frames)))
        return self._permutation_cache[1]

    def _indices(self, start: int, stop: int) -> np.ndarray:
        """Indices into this rank's frames of stream positions [start, stop)."""
        positions, n = np.arange(start, stop), len(self._frames)
        if self.split != "train":
            return positions
        epochs = positions // n
        return np.concatenate([self._permutation(e)[positions[epochs == e] % n] for e in np.unique(epochs)])

    def _chunks(self) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """(uint8 (C, S, S, 3) on device, augmented when asked; their indices into this rank's frames) from position
        `self._start` on. Chunk k always covers positions [k * chunk_size, (k + 1) * chunk_size), so a resumed
        stream augments each frame as the uninterrupted one did."""
        if torch.utils.data.get_worker_info() is not None:  # each worker would replay the whole stream
            raise ValueError("VideoFrameDataset batches on the device itself; use DataLoader(num_workers=0)")
        size, end = self.chunk_size, None if self.split == "train" else len(self._frames)
        chunk = self._start // size
        while end is None or chunk * size < end:
            low = chunk * size
            indices = self._indices(low, (low + size) if end is None else min(low + size, end))
            images = yuv_to_rgb(self._frames[torch.from_numpy(indices)].to(self.device, non_blocking=True))
            if self._augment is not None:
                seed = np.random.SeedSequence([self.seed, 1, self.rank, chunk]).generate_state(1, np.uint64)[0]
                images = self._augment(images, torch.Generator().manual_seed(int(seed)))
            skip = max(self._start - low, 0)
            yield images[skip:], indices[skip:]
            chunk += 1

    def _actions(self) -> np.ndarray:
        """(n, 7) standardized, BOUNDS_Q99-normalized actions with `self.dataset_statistics` as set now."""
        stats = self.dataset_statistics[self.dataset_name]["action"]
        return normalize_actions(STANDARDIZE_FNS[self.standardize](self._raw_actions), stats)

    def frames(self) -> Iterator[dict[str, Any]]:
        """This rank's frames before the model's processors, like `RLDSDataset.frames()`: `image (S, S, 3) uint8`
        (numpy), `action (7,) float32` (normalized), `instruction: str`. Counts `frames_consumed`."""
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
                instruction = self._instructions[self._episode[i]]
                input_ids, labels = self.sequence_builder.training_sample(instruction, actions[i])
                self.frames_consumed += 1
                yield {
                    "pixel_values": pixel_values,
                    "input_ids": torch.from_numpy(input_ids),
                    "labels": torch.from_numpy(labels),
                }

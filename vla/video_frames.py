"""Training frames as H.264 videos: a one-time exporter from RLDS (needs TensorFlow) and a TF-free torch dataset that
decodes the export with PyAV and yields what `vla.rlds.RLDSDataset` yields, augmenting and normalizing on-device.

Export layout: `videos/<episode>.mp4` (libx264 yuv444p, the pre-augmentation frames), `index.npz`, and
`dataset_statistics.json` (`{dataset_name: stats}`, identical to `RLDSDataset.dataset_statistics`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.data_config import SPLITS, STANDARDIZE_FNS, DataConfig
from vla.frame_store import read_store_episodes, read_store_index
from vla.frame_stream import STATS_NAME, IndexedFrameStream
from vla.normalization import dataset_statistics, load_dataset_statistics, save_dataset_statistics
from vla.rlds import check_rlds_dir, load_statistics
from vla.tf_import import import_tf

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_NAME = "index.npz"
VIDEO_DIR = "videos"
FPS = 20  # nominal: only the frames matter
_INDEX_KEYS = ("videos", "instructions", "lengths", "splits", "actions", "dataset_name", "standardize", "image_size")


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _pyav():
    """PyAV, or an ImportError naming the fix before any file is touched."""
    try:
        import av
    except ImportError as err:
        raise ImportError(
            "video exports need PyAV (`av`, one of this project's dependencies): pip install av==18.1.0; on an offline "
            "GPU node, carry its wheel and unzip it onto PYTHONPATH (docs/OFFLINE.md, section 5)"
        ) from err
    return av


def write_video(path: Path, frames: np.ndarray, crf: int = 23) -> None:
    """uint8 (T, H, W, 3) -> an H.264 mp4 (libx264, yuv444p, `crf`, preset slow, one encoder thread so the bytes
    do not depend on the machine), encoded by PyAV: no ffmpeg binary, so a GPU node exports its own collection."""
    av = _pyav()

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"write_video expects uint8 (T>0, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": str(crf), "preset": "slow"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def decode_video(path: Path, yuv: bool = False) -> np.ndarray:
    """An mp4 -> uint8 RGB (T, H, W, 3) decoded with PyAV (no ffmpeg binary needed); with `yuv`, its yuv444p planes
    (T, 3, H, W) instead: several times faster, and `yuv_to_rgb` turns them into the same RGB."""
    av = _pyav()

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
    av = _pyav()

    frame = av.VideoFrame.from_ndarray(np.zeros((3, 2, 2), np.uint8), format="yuv444p")
    return frame.format.name, frame.colorspace, frame.color_range


@functools.cache
def _yuv_table(device: torch.device) -> torch.Tensor:
    """(256**3, 3) uint8: the RGB swscale (PyAV's `to_ndarray(format="rgb24")`) gives each Y, U, V of a yuv444p
    frame, measured by converting one frame that holds every combination. Per pixel, so exact for any frame."""
    av = _pyav()

    levels = np.arange(256, dtype=np.uint8)
    planes = np.stack([g.reshape(4096, 4096) for g in np.meshgrid(levels, levels, levels, indexing="ij")])
    table = av.VideoFrame.from_ndarray(planes, format="yuv444p").to_ndarray(format="rgb24").reshape(-1, 3)
    return torch.from_numpy(table).to(device)


def yuv_to_rgb(planes: torch.Tensor) -> torch.Tensor:
    """uint8 yuv444p planes (B, 3, H, W) on any device -> uint8 RGB (B, H, W, 3) there, equal to PyAV's rgb24."""
    y, u, v = planes.int().unbind(1)
    index = (y << 16) | (u << 8) | v  # (B, H, W)
    return _yuv_table(planes.device).index_select(0, index.flatten()).view(*index.shape, 3)


def _read_episodes(cfg: DataConfig, builder) -> Iterator[tuple[str, np.ndarray, np.ndarray, str]]:
    """(split, frames (T, S, S, 3) uint8, raw actions (T, 7) float32, instruction) of every episode, train split
    then val split, each in storage order; frames decoded and resized exactly as `RLDSDataset` does before
    augmentation."""
    tf, tfds = import_tf()
    from vla.image_ops import resize_image

    size = cfg.image_size

    def frame(jpeg):  # RLDSDataset._tf_frames' decode
        return resize_image(tf.io.decode_image(jpeg, channels=3, expand_animations=False), size, backend="tf")

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


def export_video_frames(cfg: DataConfig, out_dir: Path, crf: int = 23) -> Path:
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


def export_frame_store(root: Path, out_dir: Path, crf: int = 23) -> Path:
    """A frame store (`vla.frame_store`, e.g. a GPU node's TF-free collection) -> an export in `out_dir`: its frames
    as stored, its actions, instructions, splits and statistics; needs no TensorFlow."""
    index = read_store_index(root)
    name = index["dataset_name"]
    stats = load_dataset_statistics(Path(root) / STATS_NAME)[name]
    episodes = read_store_episodes(root, index)
    return write_export(out_dir, episodes, name, stats, standardize=index["standardize"], crf=crf)


@contextlib.contextmanager
def _staged(out_dir: Path) -> Iterator[Path]:
    """Yield `<out_dir>.tmp` (with its videos/ folder) to write an export into; renamed to `out_dir` (empty or absent,
    checked by the caller) when the block ends, deleted when it raises: a crash never leaves a valid-looking export."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        logger.warning("removing %s, left by an interrupted export", tmp)
        shutil.rmtree(tmp)
    (tmp / VIDEO_DIR).mkdir(parents=True)
    try:
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked by the caller
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    with _staged(out_dir) as tmp:
        index = _write_videos(episodes, tmp, crf)
        index |= {"dataset_name": dataset_name, "standardize": standardize}
        np.savez(tmp / INDEX_NAME, **index, crf=crf, format_version=FORMAT_VERSION)
        save_dataset_statistics(tmp / STATS_NAME, {dataset_name: statistics})
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


def merge_exports(roots: list[Path], out_dir: Path) -> Path:
    """Exports of one dataset (e.g. demonstrations collected in chunks, each exported as it finished) -> one export
    in `out_dir`, episodes in input order with their splits, videos copied (no re-encoding), statistics recomputed over
    all episodes as the RLDS path computes them. Inputs must agree on dataset name, standardization and image size."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    indexes = [read_index(root) for root in roots]  # every input checked before anything is written
    if not indexes:
        raise ValueError("merge_exports needs at least one export")
    names = {(str(i["dataset_name"]), str(i["standardize"]), int(i["image_size"])) for i in indexes}
    if len(names) != 1:
        raise ValueError(
            f"exports to merge must share dataset name, standardization and image size; got {sorted(names)}"
        )
    ((name, standardize, _),) = names
    masks = {tuple(load_dataset_statistics(Path(r) / STATS_NAME)[name]["action"]["mask"]) for r in roots}
    if len(masks) != 1:
        raise ValueError(f"exports to merge must share the action mask of their statistics; got {sorted(masks)}")
    with _staged(out_dir) as tmp:
        videos = []
        for root, index in zip(roots, indexes, strict=True):
            for video in index["videos"]:
                videos.append(f"{VIDEO_DIR}/{len(videos):06d}.mp4")
                shutil.copyfile(Path(root) / str(video), tmp / videos[-1])
        keys = ("instructions", "lengths", "splits", "actions", "mean_abs_error")
        merged = {key: np.concatenate([i[key] for i in indexes]) for key in keys}
        merged |= {"videos": np.array(videos), "dataset_name": name, "standardize": standardize}
        crf = {int(i["crf"]) for i in indexes}  # kept when the inputs agree (-1: mixed)
        merged |= {"crf": crf.pop() if len(crf) == 1 else -1, "image_size": indexes[0]["image_size"]}
        np.savez(tmp / INDEX_NAME, **merged, format_version=FORMAT_VERSION)
        actions = STANDARDIZE_FNS[standardize](merged["actions"])
        stats = dataset_statistics(actions, len(videos), mask=np.array(next(iter(masks))))
        save_dataset_statistics(tmp / STATS_NAME, {name: stats})
    logger.info("merged %d exports (%d episodes) into %s", len(roots), len(videos), out_dir)
    return out_dir


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


class VideoFrameDataset(IndexedFrameStream):
    """`RLDSDataset`'s stream read from a video-frame export, without TensorFlow: `pixel_values (6, S, S) float32`
    on `device`, `input_ids (L,)`, `labels (L,)` int64.

    All of this rank's frames (frames of the split dealt round-robin to ranks, as `RLDSDataset`) are decoded once at
    construction into one uint8 tensor of yuv444p planes; chunks are converted to RGB on `device`. Shuffling,
    augmentation, sharding and exact resume: `vla.frame_stream.IndexedFrameStream`. Use `DataLoader(num_workers=0)`.
    Arguments: `IndexedFrameStream`'s, `root` the export's folder.
    """

    def _open(self) -> None:
        root, index = self.root, read_index(self.root)
        size = self._read_header(index, damaged=f"re-export; {_fix(root)}",
                                 size_fix="re-export with image_size={expected} or use a matching processor")  # fmt: skip
        episodes = np.flatnonzero(index["splits"] == self.split)
        videos = [self.root / str(v) for v in index["videos"][episodes]]
        missing = [str(v) for v in videos if not v.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} videos of {self.root} are missing, e.g. {missing[0]}: {_fix(root)}"
            )
        lengths = index["lengths"]
        starts = np.concatenate([[0], np.cumsum(lengths)])
        split_actions = np.concatenate(
            [np.zeros((0, 7), np.float32)] + [index["actions"][starts[e] : starts[e + 1]] for e in episodes]
        )
        instructions = [str(index["instructions"][e]) for e in episodes]
        self._assign_frames(lengths[episodes], split_actions, instructions, str(self.root))
        offsets = np.concatenate([[0], np.cumsum(lengths[episodes])])[:-1]
        self._frames = torch.from_numpy(self._decode(videos, offsets, lengths[episodes], size, len(self._mine)))

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

    def _gather(self, indices: np.ndarray) -> torch.Tensor:
        return yuv_to_rgb(self._frames[torch.from_numpy(indices)].to(self.device, non_blocking=True))

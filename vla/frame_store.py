"""A raw uint8 frame store: demonstrations written without TensorFlow or a video codec (e.g. collected on a GPU
node), read back as a training frame stream (`DataConfig(source="frames")`).

The writer stores the model-side frames exactly as the RLDS path makes them: the RLDS builder stores each 256x256
frame as JPEG (quality 95) and the reader decodes it and resizes it to 224 with lanczos3, so `add_episode` runs the
same two steps with `vla.image_ops`' TF-free backend (the JPEG decoder differs from TF's by ~1 grey level on average;
the resize agrees to 1 grey level; see `vla.image_ops`).

Layout of `<out_dir>`:
- `frames.u8`: every frame of every episode, appended in order, raw uint8 (N, S, S, 3) (memory-mapped when read);
- `actions.npy`: raw actions (N, 7) float32 in LIBERO's convention, episodes concatenated;
- `dataset_statistics.json`: `{dataset_name: stats}`, computed as `vla.rlds` computes them (all episodes);
- `index.json`: written last and atomically (temp + rename) by `close()`: format, name, image size, and per episode
  its length, instruction and split. A folder without it is a collection that never finished, and reading it says so.

The split is the RLDS path's: 95 percent of the episodes train (tfds' rounding), the rest val, taken in a hashed
order of the episodes' `file_path`s (`split_order`), not in the order they were added. An RLDS dataset stores its
episodes in tfds' key-hash order, so its last 5 percent mix tasks; a collection adds episodes task by task, so its
tail would be the last task alone (a 585-episode libero_spatial collection: all 29 val episodes from task 9, which
kept only 31 of its 60 for training).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.data_config import SPLITS, STANDARDIZE_FNS, train_episodes
from vla.frame_stream import STATS_NAME, IndexedFrameStream
from vla.normalization import dataset_statistics, save_dataset_statistics, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
FRAMES_NAME = "frames.u8"
ACTIONS_NAME = "actions.npy"
IMAGE_SIZE = 224  # the towers' input size: frames are stored already resized to it
_ENCODE_THREADS = 4  # encoder threads: keep up with ~16 simulators on a 16-core node
_MAX_PENDING = 16  # episodes waiting to be encoded before add_episode blocks (bounds memory: ~30 MB each)


def split_order(file_paths: list[str]) -> list[int]:
    """Episode numbers in the order the 95/5 split is taken: sorted by a hash of each `file_path` (the episode's
    number when it has none), so the split depends on which episodes there are, not on the order they came in."""
    keys = [path or f"#{number}" for number, path in enumerate(file_paths)]
    return sorted(range(len(keys)), key=lambda n: (hashlib.sha256(keys[n].encode()).digest(), n))


def _encode(images: np.ndarray, size: int) -> bytes:
    """The RLDS path, frame by frame: JPEG q95 stored, decoded, lanczos3-resized to `size`; raw bytes to append."""
    from vla.image_ops import jpeg_roundtrip, resize_image

    frames = np.stack([resize_image(jpeg_roundtrip(im, backend="numpy"), size, backend="numpy") for im in images])
    return np.ascontiguousarray(frames).tobytes()


class FrameStoreWriter:
    """Collects Episode dicts (docs/DESIGN.md) into a frame store at `out_dir` (layout in the module docstring).

    `out_dir` must not exist or be empty. Frames go to disk as each episode is added; `close()` writes actions,
    statistics and finally the index, and returns `out_dir`. Episodes' actions are in LIBERO's convention
    (`standardize="libero"`, as the RLDS datasets).
    """

    def __init__(self, out_dir: Path, dataset_name: str, *, image_size: int = IMAGE_SIZE) -> None:
        self.out_dir, self.dataset_name, self.image_size = Path(out_dir), dataset_name, image_size
        if self.out_dir.exists() and (not self.out_dir.is_dir() or any(self.out_dir.iterdir())):
            raise FileExistsError(f"{self.out_dir} exists and is not empty; delete it or write to another folder")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._frames = open(self.out_dir / FRAMES_NAME, "wb")  # noqa: SIM115  (closed by close())
        self._actions: list[np.ndarray] = []
        self._episodes: list[dict[str, Any]] = []
        # Frames are encoded off the caller's thread (JPEG + resize ~2.5 ms a frame; numpy and Pillow release the
        # GIL): a collection loop that adds episodes as they finish keeps its simulators stepping meanwhile.
        self._pool = ThreadPoolExecutor(max_workers=_ENCODE_THREADS, thread_name_prefix="frame-store")
        self._pending: deque[Future] = deque()

    def add_episode(self, episode: dict[str, Any]) -> None:
        """Append one Episode: `image (T, H, W, 3) uint8` (rotated 180 degrees, as recorded), `action (T, 7)` LIBERO
        convention, `language_instruction: str`; `file_path` is kept when present, other keys are ignored."""

        if self._frames.closed:
            raise ValueError(f"{self.out_dir} is closed; open a new FrameStoreWriter")
        number = len(self._episodes)
        missing = [key for key in ("image", "action", "language_instruction") if key not in episode]
        if missing:
            raise ValueError(f"episode {number} lacks {missing}; an Episode needs image, action, language_instruction")
        images, actions = np.asarray(episode["image"]), np.asarray(episode["action"], np.float32)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise ValueError(f"episode {number}: image must be uint8 (T>0, H, W, 3), got {images.dtype} {images.shape}")
        if actions.shape != (len(images), 7):
            raise ValueError(f"episode {number}: action has shape {actions.shape}, expected ({len(images)}, 7)")
        self._pending.append(self._pool.submit(_encode, images, self.image_size))
        self._write_done(block=len(self._pending) > _MAX_PENDING)
        self._actions.append(actions)
        self._episodes.append(
            {
                "length": len(images),
                "instruction": str(episode["language_instruction"]),
                "file_path": str(episode.get("file_path", "")),
            }
        )

    def _write_done(self, block: bool) -> None:
        """Write the encoded episodes in the order they were added (the oldest first, waiting for it if `block`)."""
        while self._pending and (block or self._pending[0].done()):
            self._frames.write(self._pending.popleft().result())
            block = False

    def close(self) -> Path:
        """Write actions, statistics and the index (atomically, last); returns `out_dir`."""
        if self._frames.closed:
            return self.out_dir
        while self._pending:
            self._write_done(block=True)
        self._pool.shutdown()
        self._frames.close()
        if not self._episodes:
            raise ValueError(f"no episodes were added to {self.out_dir}; nothing to close")
        actions = np.concatenate(self._actions)
        np.save(self.out_dir / ACTIONS_NAME, actions)
        stats = dataset_statistics(STANDARDIZE_FNS["libero"](actions), len(self._episodes))
        save_dataset_statistics(self.out_dir / STATS_NAME, {self.dataset_name: stats})
        order = split_order([ep["file_path"] for ep in self._episodes])
        train = set(order[: train_episodes(len(order))])
        episodes = [{**ep, "split": "train" if i in train else "val"} for i, ep in enumerate(self._episodes)]
        index = {
            "format_version": FORMAT_VERSION,
            "dataset_name": self.dataset_name,
            "standardize": "libero",
            "image_size": self.image_size,
            "num_frames": int(len(actions)),
            "episodes": episodes,
        }
        write_json_atomic(self.out_dir / INDEX_NAME, index)
        logger.info("wrote %d episodes (%d frames) to %s", len(episodes), len(actions), self.out_dir)
        return self.out_dir

    def __enter__(self) -> FrameStoreWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:  # leave no index: the folder reads as an unfinished store
            self._frames.close()


def read_store_index(root: Path) -> dict[str, Any]:
    """The index of a frame store, after checking every file is there and the frame file's size; one error naming the
    path and the fix when the store is missing, unfinished or damaged. Needs neither TensorFlow nor torch work."""
    root = Path(root)
    fix = "collect it again (FrameStoreWriter.close() writes the index last)"
    if not root.is_dir():
        raise FileNotFoundError(f"no frame store at {root}: write one with vla.frame_store.FrameStoreWriter")
    if not (root / INDEX_NAME).is_file():
        what = "frames but no" if (root / FRAMES_NAME).exists() else "no"
        raise FileNotFoundError(f"{root} has {what} {INDEX_NAME}: an unfinished frame store (a collection stopped "
                                f"before FrameStoreWriter.close()); delete {root} and {fix}")  # fmt: skip
    try:
        index = json.loads((root / INDEX_NAME).read_text())
        lengths = [int(ep["length"]) for ep in index["episodes"]]
        size, frames = int(index["image_size"]), int(index["num_frames"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{root / INDEX_NAME} is corrupt ({type(err).__name__}: {err}); {fix}") from None
    if index.get("format_version") != FORMAT_VERSION or sum(lengths) != frames:
        raise ValueError(f"{root / INDEX_NAME} has format {index.get('format_version')} (expected {FORMAT_VERSION}) or "
                         f"episode lengths that do not add up to num_frames; {fix}")  # fmt: skip
    for name in (FRAMES_NAME, ACTIONS_NAME, STATS_NAME):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} is missing: the frame store is damaged; {fix}")
    expected = frames * size * size * 3
    if (root / FRAMES_NAME).stat().st_size != expected:
        raise ValueError(f"{root / FRAMES_NAME} holds {(root / FRAMES_NAME).stat().st_size} bytes, the index says "
                         f"{frames} frames of {size}x{size}x3 = {expected}: the frame store is damaged; {fix}")  # fmt: skip
    return index


def read_store_episodes(root: Path, index: dict[str, Any]) -> Iterator[tuple[str, np.ndarray, np.ndarray, str]]:
    """(split, frames (T, S, S, 3) uint8, raw actions (T, 7) float32, instruction) of every episode of a frame store
    (`index` = `read_store_index(root)`), in the order they were added: `vla.video_frames.export_frame_store`'s
    input. Frames are read from the map one episode at a time."""
    size, total = int(index["image_size"]), int(index["num_frames"])
    frames = np.memmap(Path(root) / FRAMES_NAME, np.uint8, "r", shape=(total, size, size, 3))
    actions = np.load(Path(root) / ACTIONS_NAME)
    start = 0
    for episode in index["episodes"]:
        end = start + int(episode["length"])
        yield episode["split"], np.asarray(frames[start:end]), actions[start:end], episode["instruction"]
        start = end


class FrameStoreDataset(IndexedFrameStream):
    """A frame store's stream (the interface of `vla.frame_stream`), without TensorFlow: `pixel_values (6, S, S)
    float32` on `device`, `input_ids (L,)`, `labels (L,)` int64.

    The frames stay memory-mapped; each chunk of `chunk_size` stream positions is gathered from the map in one
    sorted fancy index (no per-frame Python work), moved to `device`, augmented there with `augment_batch` when
    `image_aug` (train only) and normalized by `image_processor.normalize_batch`. Splits, shuffling, rank shards and
    exact resume as `VideoFrameDataset`. Use `DataLoader(num_workers=0)`. Arguments: `IndexedFrameStream`'s, `root`
    the store's folder.
    """

    def _open(self) -> None:
        index = read_store_index(self.root)
        size = self._read_header(index, damaged="the store is damaged", size_fix="use a model of that image size")
        episodes = index["episodes"]
        lengths = np.array([ep["length"] for ep in episodes], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        chosen = [i for i, ep in enumerate(episodes) if ep["split"] == self.split]
        rows = np.concatenate([np.zeros(0, np.int64)] + [np.arange(starts[i], starts[i + 1]) for i in chosen])
        actions = np.load(self.root / ACTIONS_NAME)
        if actions.shape != (int(starts[-1]), 7):
            raise ValueError(f"{self.root / ACTIONS_NAME} has shape {actions.shape}, the index says ({starts[-1]}, 7)")
        where = f"{self.root} ({SPLITS[self.split]} of {len(episodes)} episodes)"
        self._assign_frames(lengths[chosen], actions[rows], [episodes[i]["instruction"] for i in chosen], where)
        self._rows = rows[self._mine]  # this rank's rows of frames.u8
        self._memmap = np.memmap(self.root / FRAMES_NAME, np.uint8, "r", shape=(int(starts[-1]), size, size, 3))

    def _gather(self, indices: np.ndarray) -> torch.Tensor:
        rows = self._rows[indices]
        order = np.argsort(rows, kind="stable")  # read the map front to back, then restore the stream order
        frames = np.empty((len(rows), *self._memmap.shape[1:]), np.uint8)
        frames[order] = self._memmap[rows[order]]
        images = torch.from_numpy(frames)
        if self.device.type == "cuda":
            images = images.pin_memory().to(self.device, non_blocking=True)
        return images.to(self.device)

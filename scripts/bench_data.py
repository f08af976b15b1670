"""Reader throughput: frames/s from an RLDS dataset to model-ready tensors, with and without augmentation.

    python scripts/bench_data.py                                     # synthetic 256x256 LIBERO-like dataset
    python scripts/bench_data.py --data_root_dir ~/modified_libero_rlds --dataset_name libero_spatial_no_noops

Rows: `tf.data frames` = read + JPEG decode + lanczos3 resize (+ augmentation) + action normalization;
`samples` = those frames through ImageProcessor and SequenceBuilder (what RLDSDataset yields);
`batches` = DataLoader(num_workers=0) + collate, i.e. what the training loop receives.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import draccus
import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class BenchConfig:
    data_root_dir: Path | None = None  # an existing RLDS root; None writes a synthetic dataset in a temp dir
    dataset_name: str = "libero_spatial_no_noops"  # dataset under data_root_dir (or the synthetic one's name)
    episodes: int = 10  # synthetic dataset: number of episodes
    steps: int = 60  # synthetic dataset: steps per episode
    frames: int = 300  # frames timed per row (after `warmup` untimed ones)
    warmup: int = 30  # frames read before timing (pipeline start-up, shuffle-buffer fill)
    batch_size: int = 16  # batch size of the `batches` rows
    tokenizer_dir: Path = REPO.parent / "shared" / "tokenizers" / "llama2"  # a Llama-2 tokenizer.model folder


def synthetic_episodes(episodes: int, steps: int, seed: int = 0):
    """Episode dicts with smooth 256x256 images (JPEG sizes close to rendered scenes) and LIBERO-range actions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    for i in range(episodes):
        freq, phase = rng.uniform(1, 6, (steps, 3, 2)), rng.uniform(0, 6.3, (steps, 3))
        waves = np.sin(2 * np.pi * (freq[..., :1, None] * yy + freq[..., 1:, None] * xx) + phase[..., None, None])
        images = np.clip(128 + 100 * waves + rng.normal(0, 6, waves.shape), 0, 255).astype(np.uint8)
        images = images.transpose(0, 2, 3, 1)  # (T, 256, 256, 3)
        action = rng.uniform(-0.9, 0.9, (steps, 7)).astype(np.float32)
        action[:, 6] = rng.choice([-1.0, 1.0], steps)
        yield {
            "image": images,
            "wrist_image": images[:, ::-1],
            "state": rng.normal(size=(steps, 8)).astype(np.float32),
            "joint_state": rng.normal(size=(steps, 7)).astype(np.float32),
            "action": action,
            "language_instruction": f"pick up the black bowl number {i % 10} and place it on the plate",
            "file_path": f"synthetic/episode_{i}.hdf5",
        }


def timed(iterator, frames: int, warmup: int, per_item: int = 1) -> tuple[float, float]:
    """(frames/s wall clock, CPU ms/frame over all threads of this process) after `warmup` frames."""
    for _ in itertools.islice(iterator, max(1, warmup // per_item)):
        pass
    wall, cpu = time.perf_counter(), time.process_time()
    count = per_item * sum(1 for _ in itertools.islice(iterator, max(1, frames // per_item)))
    return count / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / count


def main(cfg: BenchConfig) -> list[tuple[str, bool, float, float]]:
    import torch
    from transformers import LlamaTokenizer

    from vla import ActionTokenizer, ImageProcessor, SequenceBuilder, collate
    from vla.rlds import RLDSConfig, RLDSDataset, write_rlds_dataset

    tmp = None
    root = cfg.data_root_dir
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        start = time.perf_counter()
        write_rlds_dataset(synthetic_episodes(cfg.episodes, cfg.steps), root, cfg.dataset_name)
        print(f"wrote {cfg.episodes * cfg.steps} synthetic frames in {time.perf_counter() - start:.1f} s")
    tokenizer = LlamaTokenizer.from_pretrained(str(cfg.tokenizer_dir), add_bos_token=True)
    builder, processor = SequenceBuilder(tokenizer, ActionTokenizer(tokenizer)), ImageProcessor()

    rows = []
    for aug in (False, True):
        data_cfg = RLDSConfig(data_root_dir=root, dataset_name=cfg.dataset_name, image_aug=aug)
        ds = RLDSDataset(data_cfg, builder, processor)
        rows.append(("tf.data frames", aug, *timed(ds.frames(), cfg.frames, cfg.warmup)))
        rows.append(("samples", aug, *timed(iter(ds), cfg.frames, cfg.warmup)))
        loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, collate_fn=collate, num_workers=0)
        rows.append((f"batches of {cfg.batch_size}", aug, *timed(iter(loader), cfg.frames, cfg.warmup, cfg.batch_size)))
    if tmp is not None:
        tmp.cleanup()

    print(f"\n{'stage':<20} {'augment':<8} {'frames/s':>9} {'CPU ms/frame':>13}")
    for stage, aug, rate, cpu_ms in rows:
        print(f"{stage:<20} {str(aug):<8} {rate:>9.1f} {cpu_ms:>13.2f}")
    print(f"(torch threads {torch.get_num_threads()}; dataset {ds.num_frames} frames, split {data_cfg.split})")
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(draccus.parse(BenchConfig))

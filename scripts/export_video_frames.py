"""Export an RLDS dataset as H.264 videos of its pre-augmentation frames (+ index and statistics), the compact,
TensorFlow-free training data that `vla.video_frames.VideoFrameDataset` reads.

    python scripts/export_video_frames.py --data_root_dir ~/modified_libero_rlds \
        --dataset_name libero_spatial_no_noops --out data/libero_spatial_video
    python scripts/export_video_frames.py --frames_dir data/spatial/libero_spatial_no_noops --out data/video_c
        # a frame store (collect_demos.py --format frames, e.g. on a node without TensorFlow) -> an export
    python scripts/export_video_frames.py --merge data/video_a data/video_b --out data/video   # exports -> one
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vla.rlds import RLDSConfig
from vla.runtime import configure_logging
from vla.video_frames import describe_export, export_frame_store, export_video_frames, merge_exports


def main() -> None:
    defaults = RLDSConfig(data_root_dir=Path("."))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_root_dir", type=Path, help="folder holding <dataset_name>/<version>/")
    source.add_argument("--frames_dir", type=Path, help="a frame store (collect_demos.py --format frames)")
    source.add_argument("--merge", type=Path, nargs="+", help="exports of one dataset to join (no re-encoding)")
    parser.add_argument("--dataset_name", default=defaults.dataset_name, help="with --data_root_dir")
    parser.add_argument("--out", type=Path, required=True, help="export folder (must not exist or be empty)")
    parser.add_argument(
        "--crf",
        type=int,
        default=23,
        help="libx264 quality: lower = larger and closer (0-51); --merge copies the videos as they are",
    )
    args = parser.parse_args()
    configure_logging()
    if args.merge:
        out = merge_exports(args.merge, args.out)
    elif args.frames_dir:
        out = export_frame_store(args.frames_dir, args.out, crf=args.crf)
    else:
        cfg = RLDSConfig(data_root_dir=args.data_root_dir, dataset_name=args.dataset_name)
        out = export_video_frames(cfg, args.out, crf=args.crf)
    info = describe_export(out)
    print(
        f"{out}: {info['frames']} frames, {info['episodes']} episodes "
        f"({info['train_episodes']} train, {info['val_episodes']} val), {info['bytes']} bytes, "
        f"{info['bytes'] / 1024 / info['frames']:.2f} KB/frame, worst episode mean abs error "
        f"{info['max_mean_abs_error']:.2f} grey levels"
    )


if __name__ == "__main__":
    main()

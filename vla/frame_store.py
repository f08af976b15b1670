"""A raw uint8 frame store: demonstrations written without TensorFlow or a video codec (e.g. collected on a GPU
node), read back as a training frame stream (`DataConfig(source="frames")`).

CONTRACT (shared by parallel work, keep the names): `FrameStoreWriter(out_dir, dataset_name)` with
`add_episode(episode)` taking the Episode dict of docs/DESIGN.md (image (T, 256, 256, 3) uint8 rotated 180°,
action (T, 7) float32 in LIBERO's convention, language_instruction str, ...) and `close() -> Path`;
`FrameStoreDataset` (the stream). Bodies come with the data-interface work (issue 17).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FrameStoreWriter:
    def __init__(self, out_dir: Path, dataset_name: str) -> None:
        raise NotImplementedError

    def add_episode(self, episode: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> Path:
        raise NotImplementedError

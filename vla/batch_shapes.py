"""The few batch shapes a captured decoder runs: any number of requests and any mix of prompt lengths map onto a
small set of (batch, length) shapes, so CUDA graphs captured once serve every later batch (vla.fast_decode)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

BATCH_BUCKETS = (
    1,
    2,
    4,
    8,
    12,
    16,
    24,
    32,
    48,
    64,
)  # batch sizes captured; larger batches round up to a multiple of 16
LENGTH_MULTIPLE = 8  # a batch's prompt length rounds up to this (one prompt alone keeps its length)


def bucket_batch(rows: int) -> int:
    """The captured batch size that `rows` requests run in: the smallest of `BATCH_BUCKETS` that holds them."""
    return next((size for size in BATCH_BUCKETS if size >= rows), -(-rows // 16) * 16)


def bucket_length(length: int) -> int:
    """A batch's prompt length, rounded up to a multiple of `LENGTH_MULTIPLE`."""
    return -(-length // LENGTH_MULTIPLE) * LENGTH_MULTIPLE


def pad_batch(pixel_values: torch.Tensor, prompts: Sequence[Sequence[int]]):
    """Pad a batch up to `bucket_batch` rows with copies of its last row (their actions are dropped)."""
    extra = bucket_batch(len(prompts)) - len(prompts)
    if extra == 0:
        return pixel_values, prompts
    filler = pixel_values[-1:].expand(extra, *pixel_values.shape[1:])
    return torch.cat([pixel_values, filler]), [*prompts, *[prompts[-1]] * extra]

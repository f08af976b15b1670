"""The few batch shapes a captured decoder runs: any number of requests and any mix of prompt lengths map onto a
small set of (batch, length) shapes, so CUDA graphs captured once serve every later batch (vla.fast_decode)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# batch sizes captured; larger batches round up to a multiple of 16
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
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


def warmup_batches(prompts: Sequence[Sequence[int]], max_batch: int) -> list[list[Sequence[int]]]:
    """Batches whose bucketed shapes are those that any batch of up to `max_batch` of these prompts runs in: each
    prompt length alone; and for every batch bucket > 1 and every bucketed length, a padded batch (the longest
    prompt of that length with the shortest) and, for prompts exactly as long as their bucket, the unpadded batch of
    one prompt."""
    distinct = list({tuple(p): p for p in prompts}.values())
    shortest = min(distinct, key=len)
    batches = [[p] for p in {len(p): p for p in distinct}.values()]
    for size in (b for b in BATCH_BUCKETS if 1 < b <= bucket_batch(max_batch)):
        for length in sorted({bucket_length(len(p)) for p in distinct}):
            group = [p for p in distinct if bucket_length(len(p)) == length]
            longest = max(group, key=len)
            if len(shortest) < length:
                batches.append([longest, *[shortest] * (size - 1)])
            batches.extend([p] * size for p in {len(p): p for p in group if len(p) == length}.values())
    return batches

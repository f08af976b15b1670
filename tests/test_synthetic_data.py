"""SyntheticDataset: training samples of the documented shapes; ranks interleave one global stream; exact resume."""

from __future__ import annotations

import itertools

import torch

from vla import ActionTokenizer, ImageProcessor, SequenceBuilder
from vla.synthetic_data import SYNTHETIC_NAME, SyntheticDataset


def _stream(llama_tokenizer, n: int, **kwargs) -> tuple[SyntheticDataset, list[dict]]:
    builder = SequenceBuilder(llama_tokenizer, ActionTokenizer(llama_tokenizer))
    dataset = SyntheticDataset(builder, ImageProcessor(), num_frames=6, **kwargs)
    return dataset, list(itertools.islice(iter(dataset), n))


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("pixel_values", "input_ids", "labels"))


def test_samples_have_the_training_shapes_and_statistics(llama_tokenizer):
    dataset, (sample, other) = _stream(llama_tokenizer, 2)
    assert sample["pixel_values"].shape == (6, 224, 224) and sample["pixel_values"].dtype == torch.float32
    assert sample["input_ids"].dtype == sample["labels"].dtype == torch.int64
    assert (sample["labels"] != -100).sum() == 8  # 7 action ids + EOS
    assert not _same(sample, other)
    assert set(dataset.dataset_statistics) == {SYNTHETIC_NAME}
    assert dataset.dataset_statistics[SYNTHETIC_NAME]["num_transitions"] == 6


def test_two_ranks_interleave_the_single_process_stream(llama_tokenizer):
    _, single = _stream(llama_tokenizer, 8)
    _, rank0 = _stream(llama_tokenizer, 4, rank=0, world_size=2)
    _, rank1 = _stream(llama_tokenizer, 4, rank=1, world_size=2)
    interleaved = [s for pair in zip(rank0, rank1, strict=True) for s in pair]
    assert all(_same(a, b) for a, b in zip(single, interleaved, strict=True))
    assert _same(single[0], single[6])  # the stream repeats every num_frames frames


def test_resume_continues_the_stream(llama_tokenizer):
    dataset, frames = _stream(llama_tokenizer, 5)
    assert dataset.state_dict()["frames_consumed"] == 5
    resumed, _ = _stream(llama_tokenizer, 0)
    resumed.load_state_dict({"frames_consumed": 3, "seed": 7, "world_size": 1})
    assert all(_same(a, b) for a, b in zip(frames[3:], itertools.islice(iter(resumed), 2), strict=True))

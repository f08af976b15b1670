import numpy as np
import torch

from vla import IGNORE_INDEX, SequenceBuilder, build_prompt, collate

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"
# Reference §3 worked example: the 34 prompt ids of libero_spatial task 0.
REFERENCE_PROMPT_IDS = [
    1, 512, 29901, 1724, 3158, 881, 278, 19964, 2125, 304, 5839, 701, 278, 4628, 12580, 29880, 1546, 278, 15284,
    322, 278, 364, 420, 9089, 322, 2058, 372, 373, 278, 15284, 29973, 13, 3744, 29901,
]  # fmt: skip


def test_prompt_text():
    assert build_prompt("Open The Drawer ") == "In: What action should the robot take to open the drawer?\nOut:"


def test_reference_prompt_ids(llama_tokenizer, action_tokenizer):
    builder = SequenceBuilder(llama_tokenizer, action_tokenizer)
    assert builder.prompt_ids(INSTRUCTION) == REFERENCE_PROMPT_IDS
    assert llama_tokenizer(build_prompt(INSTRUCTION)).input_ids == REFERENCE_PROMPT_IDS
    assert builder.space_id == 29871  # derived from the tokenizer's '▁' piece; pinned here
    assert builder.inference_ids(INSTRUCTION) == [*REFERENCE_PROMPT_IDS, 29871]


def test_training_ids_match_the_official_training_text(llama_tokenizer, action_tokenizer):
    builder = SequenceBuilder(llama_tokenizer, action_tokenizer)
    action = np.array([-1.0, -0.3, 0.0, 0.2, 0.7, 0.999, 1.0])
    input_ids, labels = builder.training_sample(INSTRUCTION, action)
    action_ids = action_tokenizer.encode(action)
    official_text = build_prompt(INSTRUCTION) + " " + llama_tokenizer.decode(action_ids.tolist()) + "</s>"
    assert input_ids.tolist() == llama_tokenizer(official_text).input_ids
    assert len(input_ids) == 43


def test_inference_ids_are_a_prefix_of_training_ids(llama_tokenizer, action_tokenizer):
    builder = SequenceBuilder(llama_tokenizer, action_tokenizer)
    rng = np.random.default_rng(0)
    for instruction in [INSTRUCTION, "Put the bowl on the stove", "turn on the stove"]:
        input_ids, _ = builder.training_sample(instruction, rng.uniform(-1, 1, 7))
        prefix = builder.inference_ids(instruction)
        assert input_ids[: len(prefix)].tolist() == prefix
        assert len(input_ids) == len(prefix) + 8


def test_labels_cover_only_action_tokens_and_eos(llama_tokenizer, action_tokenizer):
    builder = SequenceBuilder(llama_tokenizer, action_tokenizer)
    input_ids, labels = builder.training_sample(INSTRUCTION, np.zeros(7))
    kept = labels != IGNORE_INDEX
    assert kept.sum() == 8 and kept[-8:].all()
    assert labels[-1] == llama_tokenizer.eos_token_id
    assert action_tokenizer.is_action_id(labels[-8:-1]).all()
    np.testing.assert_array_equal(labels[kept], input_ids[kept])


def test_collate_right_pads(llama_tokenizer, action_tokenizer):
    builder = SequenceBuilder(llama_tokenizer, action_tokenizer)
    samples = []
    for instruction in ["go", "pick up the alphabet soup and place it in the basket"]:
        input_ids, labels = builder.training_sample(instruction, np.zeros(7))
        samples.append({"input_ids": input_ids, "labels": labels, "pixel_values": torch.zeros(6, 224, 224)})
    batch = collate(samples)
    short, long = len(samples[0]["input_ids"]), len(samples[1]["input_ids"])
    assert batch["input_ids"].shape == (2, long) and batch["pixel_values"].shape == (2, 6, 224, 224)
    assert (batch["input_ids"][0, short:] == 32000).all()
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (long - short)
    assert batch["attention_mask"][1].all()


def test_prompt_ids_are_cached_per_instruction_without_aliasing(llama_tokenizer, action_tokenizer, monkeypatch):
    builder = SequenceBuilder(llama_tokenizer, action_tokenizer)
    first = builder.prompt_ids("put the bowl on the plate")
    first.append(-1)  # a caller's edit must not reach the cache
    calls = []
    monkeypatch.setattr(builder, "tokenizer", lambda *a, **k: calls.append(a) or llama_tokenizer(*a, **k))
    assert builder.prompt_ids("put the bowl on the plate") == first[:-1] and calls == []  # served from the cache
    other = builder.prompt_ids("put the bowl on the stove")
    assert len(calls) == 1 and other != first[:-1] and other[0] == llama_tokenizer.bos_token_id

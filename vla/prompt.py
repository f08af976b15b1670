"""The OpenVLA prompt and the token sequences built from it: training (with action labels) and inference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vla.action_tokenizer import ActionTokenizer

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
IGNORE_INDEX = -100  # label value that cross-entropy skips
PAD_TOKEN = "<PAD>"  # the one token OpenVLA adds to Llama-2's vocabulary
PAD_TOKEN_ID = 32000  # its id: right after Llama-2's 32000 pieces (the one place this number is written)


def build_prompt(instruction: str) -> str:
    """The inference prompt for one instruction (lower-cased, as OpenVLA trains and evaluates)."""
    return PROMPT_TEMPLATE.format(instruction=instruction.strip().lower())


class SequenceBuilder:
    """Token ids for training and inference, built so that the inference ids are an exact prefix of the training ids.

    OpenVLA tokenizes the training text `"...Out: <action glyphs></s>"`; because no `▁<glyph>` piece exists, the space
    becomes its own piece `▁` (id 29871 for Llama-2) before the 7 action ids. At inference the prompt ends at `Out:`
    and that `▁` id is appended explicitly. We build both directly from ids, so they agree by construction.
    """

    def __init__(self, tokenizer, action_tokenizer: ActionTokenizer) -> None:
        self.tokenizer = tokenizer
        self.action_tokenizer = action_tokenizer
        self.space_id = tokenizer.convert_tokens_to_ids("▁")
        if self.space_id is None or self.space_id == tokenizer.unk_token_id:
            raise ValueError("tokenizer has no '▁' piece; OpenVLA's prompt needs a SentencePiece (Llama) vocabulary")
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("tokenizer needs BOS and EOS tokens (load Llama's with add_bos_token=True)")
        self.bos_id, self.eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        self._prompt_cache: dict[str, tuple[int, ...]] = {}  # instruction -> ids: datasets repeat few instructions

    def prompt_ids(self, instruction: str) -> list[int]:
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            ids = (self.bos_id, *self.tokenizer(build_prompt(instruction), add_special_tokens=False).input_ids)
            if len(self._prompt_cache) < PROMPT_CACHE_SIZE:
                self._prompt_cache[instruction] = ids
        return list(ids)

    def inference_ids(self, instruction: str) -> list[int]:
        """BOS, the prompt up to `Out:`, then `▁`: the model's next 7 tokens are the action."""
        return [*self.prompt_ids(instruction), self.space_id]

    def training_sample(self, instruction: str, normalized_action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """input_ids (L,) and labels (L,) int64; labels are IGNORE_INDEX except the action ids and the final EOS."""
        action_ids = self.action_tokenizer.encode(np.asarray(normalized_action).reshape(-1)).tolist()
        input_ids = np.asarray([*self.inference_ids(instruction), *action_ids, self.eos_id], dtype=np.int64)
        labels = np.full_like(input_ids, IGNORE_INDEX)
        labels[-(len(action_ids) + 1) :] = input_ids[-(len(action_ids) + 1) :]
        return input_ids, labels


PROMPT_CACHE_SIZE = 100_000  # distinct instructions remembered by a SequenceBuilder (OXE has far fewer per dataset)


def collate(samples: Sequence[dict], pad_token_id: int = PAD_TOKEN_ID) -> dict[str, torch.Tensor]:
    """Right-pad samples of `input_ids (L,)`, `labels (L,)`, `pixel_values (6, 224, 224)` into a batch:
    input_ids / attention_mask / labels (B, L_max), pixel_values (B, 6, 224, 224)."""
    length = max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        input_ids[i, :n] = torch.as_tensor(s["input_ids"])
        labels[i, :n] = torch.as_tensor(s["labels"])
        attention_mask[i, :n] = 1
    pixel_values = torch.stack([torch.as_tensor(s["pixel_values"]) for s in samples])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pixel_values": pixel_values}


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_token_id: int = PAD_TOKEN_ID, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """B id lists starting with BOS -> input_ids, attention_mask (B, L) int64, padded *after BOS* (`[BOS | pad... |
    text]`) so that the image inserted after BOS is followed by each row's text without a gap of pads.
    length: L, at least the longest prompt (default: exactly that)."""
    longest = max(len(p) for p in prompts)
    if length is not None and length < longest:
        raise ValueError(f"length {length} is shorter than the longest prompt ({longest} ids)")
    length = length or longest
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompts):
        input_ids[row, 0], attention_mask[row, 0] = ids[0], 1  # BOS stays first: the image follows it
        input_ids[row, length - len(ids) + 1 :] = torch.as_tensor(ids[1:])
        attention_mask[row, length - len(ids) + 1 :] = 1
    return input_ids, attention_mask

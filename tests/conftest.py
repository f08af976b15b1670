"""Shared fixtures: the real Llama-2 vocabulary (skipped when ../shared is absent) and its action tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LLAMA2_DIR = REPO.parent / "shared" / "tokenizers" / "llama2"


@pytest.fixture(scope="session")
def llama_tokenizer():
    if not (LLAMA2_DIR / "tokenizer.model").is_file():
        pytest.skip(f"real Llama-2 vocabulary not found at {LLAMA2_DIR}")
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(LLAMA2_DIR), add_bos_token=True)


@pytest.fixture(scope="session")
def action_tokenizer(llama_tokenizer):
    from vla import ActionTokenizer

    return ActionTokenizer(llama_tokenizer)

"""vla: OpenVLA LoRA fine-tuning and LIBERO evaluation on current libraries."""

from vla.action_tokenizer import ActionTokenizer
from vla.normalization import (
    compute_action_stats,
    dataset_statistics,
    load_dataset_statistics,
    normalize_actions,
    resolve_unnorm_key,
    save_dataset_statistics,
    unnormalize_actions,
)
from vla.processor import ImageProcessor
from vla.prompt import IGNORE_INDEX, PROMPT_TEMPLATE, SequenceBuilder, build_prompt, collate

__all__ = [
    "IGNORE_INDEX",
    "PROMPT_TEMPLATE",
    "ActionTokenizer",
    "ImageProcessor",
    "SequenceBuilder",
    "build_prompt",
    "collate",
    "compute_action_stats",
    "dataset_statistics",
    "load_dataset_statistics",
    "normalize_actions",
    "resolve_unnorm_key",
    "save_dataset_statistics",
    "unnormalize_actions",
]

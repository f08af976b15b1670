"""vla: OpenVLA LoRA fine-tuning and LIBERO evaluation on current libraries."""

from vla.action_tokenizer import ActionTokenizer

# isort: off
from vla.normalization import (compute_action_stats, dataset_statistics, load_dataset_statistics, normalize_actions,
                               resolve_unnorm_key, save_dataset_statistics, unnormalize_actions)  # fmt: skip

# isort: on
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

from vla.libero_io import libero_action, libero_image  # noqa: E402  (LIBERO eval image/action contract)

__all__ += ["libero_action", "libero_image"]

from vla.checkpoint import load_tokenizer, save_official_checkpoint  # noqa: E402
from vla.lora import LoraSettings, load_adapter, merge_lora, save_adapter  # noqa: E402
from vla.model import VLA, VLAConfig, build_vla, load_official_checkpoint  # noqa: E402
from vla.vision import VisionConfig  # noqa: E402

__all__ += ["VLA", "LoraSettings", "VLAConfig", "VisionConfig", "build_vla", "load_adapter", "load_official_checkpoint",
            "load_tokenizer", "merge_lora", "save_adapter", "save_official_checkpoint"]  # fmt: skip

"""Int8 copies of official-layout checkpoints, for shipping small models inside a git repository.

Every float weight of two or more dimensions (the towers' patch embeddings and matrices, the projector, the Llama's
embeddings and projections) is stored as int8 with one float32 scale per output row (symmetric: row absmax / 127);
norms and biases stay float16. `lm_head` keeps only its action-id rows: this project decodes actions over those rows
alone (`VLA.generate_action_ids`, `vla.fast_decode`), so the other 31,808 rows never reach an action; reading gives
them zeros. For the `small` preset that is 55 MB of float16 -> 19 MB.

The directory is the official layout (config.json, tokenizer, preprocessor and statistics files) with the weights
in `model-int8.safetensors` and config.json's `vla_int8` entry saying so. `VLA.from_pretrained` reads it into float
weights (`read_int8_weights`); the official code cannot, and training should resume from the float checkpoint.
`vla.checkpoint_export.save_int8_checkpoint` writes one (`scripts/convert_checkpoint.py --dtype int8`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vla.files import CorruptFileError, check_finite, open_safetensors
from vla.int8_linear import dequantize

INT8_KEY = "vla_int8"  # config.json entry of an int8 checkpoint
INT8_FORMAT = "rowwise-v1"
INT8_FILE = "model-int8.safetensors"
SCALE = ".int8_scale"  # suffix of a weight's per-row scales
LM_HEAD = "language_model.lm_head.weight"
MIN_ELEMENTS = 4096  # smaller tensors (norms, biases, the class tokens) stay float16
REEXPORT = "re-export it with scripts/convert_checkpoint.py --dtype int8 from the float checkpoint"


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float (rows, ...) -> int8 of the same shape and float32 scales (rows,), `weight ≈ q * scale` per row."""
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(flat / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(weight.shape), scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 (rows, ...) and scales (rows,) -> float32 of the same shape (`vla.int8_linear.dequantize` per row)."""
    return dequantize(q.reshape(q.shape[0], -1), scale, torch.float32).reshape(q.shape)


def read_int8_weights(directory: Path, official: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                      dtype: torch.dtype) -> dict[str, torch.Tensor]:  # fmt: skip
    """Official key -> float tensor of `dtype` for every key of `shapes`, from an int8 checkpoint's file (lm_head's
    rows outside the stored action rows are zeros). Raises naming the problem on a wrong format, key or shape."""
    entry = official.get(INT8_KEY) or {}
    if entry.get("format") != INT8_FORMAT:
        raise ValueError(f"{directory}: int8 format {entry.get('format')!r} is not {INT8_FORMAT!r}; {REEXPORT}")
    file = directory / INT8_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{directory} is an int8 checkpoint (config.json: {INT8_KEY}) but lacks {INT8_FILE}; "
                                f"{REEXPORT}")  # fmt: skip
    lo, hi = entry["lm_head_rows"]
    weights = {}
    with open_safetensors(file, REEXPORT) as f:
        stored = set(f.keys())  # noqa: SIM118 (safe_open is not iterable)
        keys = {k for k in stored if not k.endswith(SCALE)}
        missing, unexpected = sorted(set(shapes) - keys), sorted(keys - set(shapes))
        if missing or unexpected:
            raise KeyError(f"{file} does not match its config.json: missing keys {missing[:5]}, unexpected keys "
                           f"{unexpected[:5]}; {REEXPORT}")  # fmt: skip
        for key in sorted(keys):
            tensor = f.get_tensor(key)
            if key + SCALE in stored:
                tensor = dequantize_rows(tensor, f.get_tensor(key + SCALE))
            check_finite({key: tensor}, file)
            if key == LM_HEAD:
                rows, tensor = tensor, torch.zeros(shapes[key], dtype=tensor.dtype)
                tensor[lo : hi + 1] = rows
            if tuple(tensor.shape) != shapes[key]:
                raise CorruptFileError(f"{file}: {key} has shape {tuple(tensor.shape)}, config.json implies "
                                       f"{shapes[key]}; {REEXPORT}")  # fmt: skip
            weights[key] = tensor.to(dtype)
    return weights

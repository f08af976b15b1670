"""The trainer state (the resume point: trainable weights, optimizer moments, RNG states, data positions, metric
history) as two plain files: `trainer_state.safetensors` holds every tensor and array, `trainer_state.json` the rest
of the structure with references into it. Neither format can run code when read, unlike a pickle (`torch.save`).
A run saved by an older version as `trainer_state.pt` is still read, through torch's weights-only unpickler."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.files import CorruptFileError, atomic_write, atomic_write_text, check_finite, read_json, torch_load_arrays

TENSORS_FILE = "trainer_state.safetensors"
STRUCTURE_FILE = "trainer_state.json"
LEGACY_FILE = "trainer_state.pt"  # pickle written by torch.save before the safetensors format
_FORMAT = 1
_FIX = "the run cannot resume from it: resume from a copy of the run made before the damage, or start a new run"


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON-able data; tensors and arrays go to `tensors` under `key` (their path in the structure)."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):  # numpy's RNG state (uint32): stored widened, restored to its dtype
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value).astype(np.int64 if value.dtype.kind in "iub" else
                                                                          np.float64))  # fmt: skip
        return {"__ndarray__": key, "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in value.items()}
        return {"__items__": [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in value.items()]}  # e.g. int keys
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"trainer state entry {key} is a {type(value).__name__}; only tensors, arrays and plain data save")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().astype(np.dtype(value["dtype"]))
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {k: _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    """Write `state` as `trainer_state.safetensors` + `trainer_state.json` in `directory` (each atomically)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = {"format": _FORMAT, "state": _encode(state, "", tensors)}
    atomic_write(Path(directory) / TENSORS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_text(Path(directory) / STRUCTURE_FILE, json.dumps(structure))


def has_trainer_state(directory: Path) -> bool:
    return (Path(directory) / STRUCTURE_FILE).is_file() or (Path(directory) / LEGACY_FILE).is_file()


def load_trainer_state(directory: Path) -> dict[str, Any]:
    """The state `save_trainer_state` wrote (or a legacy `trainer_state.pt`). Every failure names the file: missing,
    truncated or garbage files, a structure that references absent tensors, a non-finite trainable weight."""
    directory = Path(directory)
    if not (directory / STRUCTURE_FILE).is_file() and (directory / LEGACY_FILE).is_file():
        state = torch_load_arrays(directory / LEGACY_FILE, _FIX)
        if not isinstance(state, dict) or "step" not in state:
            raise CorruptFileError(f"{directory / LEGACY_FILE} holds no trainer state; {_FIX}")
        check_finite(state.get("trainable", {}), directory / LEGACY_FILE)
        return state
    structure = read_json(directory / STRUCTURE_FILE, _FIX)
    tensors = read_safetensors(directory / TENSORS_FILE, _FIX)
    try:
        if structure.get("format") != _FORMAT:
            raise CorruptFileError(f"format {structure.get('format')!r} is not {_FORMAT}")
        state = _decode(structure["state"], tensors)
    except (CorruptFileError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise CorruptFileError(
            f"{directory / STRUCTURE_FILE} does not match {TENSORS_FILE} ({type(err).__name__}: {err}); {_FIX}"
        ) from None
    check_finite(state["trainable"], directory / TENSORS_FILE)
    return state


def read_safetensors(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing, truncated or garbage file raises one error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {fix}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CorruptFileError(
            f"{path} is not a readable safetensors file ({err}): truncated or corrupt; {fix}"
        ) from None

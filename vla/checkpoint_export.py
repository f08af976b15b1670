"""Writing a checkpoint in the int8 format of `vla.checkpoint_int8` (small models shipped inside a git repository)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from vla.checkpoint import INDEX_FILE, save_official_checkpoint, weight_files
from vla.checkpoint_int8 import INT8_FILE, INT8_FORMAT, INT8_KEY, LM_HEAD, MIN_ELEMENTS, SCALE, quantize_rows
from vla.files import open_safetensors, replace_directory


def save_int8_checkpoint(vla: nn.Module, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Write `vla` as an int8 checkpoint (`vla.checkpoint_int8`): the official layout's files from
    `save_official_checkpoint` (float32, staged), its shards replaced by one file of int8 matrices quantized from the
    float32 values and float16 small tensors. Written to a temp dir, then renamed into place."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        staged = save_official_checkpoint(vla, tmp / "float32", dtype=torch.float32)
        files = weight_files(staged)
        lo, hi = vla.action_tokenizer.id_range
        tensors: dict[str, torch.Tensor] = {}
        for file in sorted(set(files.values())):
            with open_safetensors(file, "re-save the float checkpoint") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    tensor = f.get_tensor(key)
                    if key == LM_HEAD:
                        tensor = tensor[lo : hi + 1]
                    if tensor.dim() >= 2 and tensor.numel() >= MIN_ELEMENTS:
                        tensors[key], tensors[key + SCALE] = quantize_rows(tensor)
                    else:
                        tensors[key] = tensor.half().contiguous()
        save_file(tensors, str(tmp / INT8_FILE), metadata={"format": "pt"})
        for file in {*files.values(), staged / INDEX_FILE}:
            file.unlink(missing_ok=True)
        config = json.loads((staged / "config.json").read_text())
        config[INT8_KEY] = {"format": INT8_FORMAT, "lm_head_rows": [lo, hi]}
        (staged / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for path in staged.iterdir():
            path.rename(tmp / path.name)
        staged.rmdir()
        replace_directory(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory

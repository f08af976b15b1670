"""Crash-safe file writes (every file or directory is written under a temporary name, then renamed into place, so an
interrupted process never leaves half a file where a reader expects a whole one) and careful reads (a truncated or
garbage JSON, YAML, JSON-lines or torch file raises one error naming the file, what is wrong and the fix; nothing
is ever unpickled beyond plain arrays)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class CorruptFileError(ValueError):
    """A file exists but cannot be read (truncated, garbage, or not the format its name says). The message names the
    file, what is wrong and the fix."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a temp file next to `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def replace_directory(source: Path, target: Path) -> None:
    """Move the finished directory `source` to `target`. An existing `target` is swapped with it in one atomic step
    where the OS can (Linux renameat2 RENAME_EXCHANGE), then deleted, so a reader never finds `target` missing."""
    if target.exists() and _exchange(source, target):
        shutil.rmtree(source)  # now the old contents
        return
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux >= 3.15); False where unsupported (the caller falls back to two renames)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def read_json(path: Path, fix: str = "restore it from a backup or re-create it") -> Any:
    """A JSON file; a missing, truncated or garbage file raises one error naming it, what is wrong and `fix`."""
    return _parse_file(path, json.loads, json.JSONDecodeError, missing=lambda path: f"{path} is missing; {fix}",
                       invalid=lambda path, err: f"{path} is not valid JSON ({err}): it is truncated or corrupt; {fix}")  # fmt: skip


def _parse_file(path: Path, parse: Callable[[str], Any], error: type[Exception], *, missing: Callable[[Path], str],
                invalid: Callable[[Path, Exception], str]) -> Any:  # fmt: skip
    """`parse` of a text file; FileNotFoundError(`missing(path)`) when there is none, CorruptFileError(`invalid(path,
    err)`) when `parse` raises `error` or the file is not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing(path))
    try:
        return parse(path.read_text())
    except (error, UnicodeDecodeError) as err:
        raise CorruptFileError(invalid(path, err)) from None


@contextlib.contextmanager
def open_safetensors(file: Path, fix: str):
    """safetensors' `safe_open`, with a truncated or garbage file reported by name instead of a bare header error."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(file), framework="pt")
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CorruptFileError(
            f"{file} is not a readable safetensors file ({err}): it is truncated or corrupt; {fix}"
        ) from None
    with handle as f:
        yield f


def read_yaml(path: Path, fix: str = "fix the line named above") -> Any:
    """A YAML file (safe loader: plain data only); a syntax error raises one error naming the file and the line."""
    import yaml

    return _parse_file(path, yaml.safe_load, yaml.YAMLError, missing=lambda path: f"config file {path} does not exist",
                       invalid=lambda path, err: f"{path} is not valid YAML ({' '.join(str(err).split())}); {fix}")  # fmt: skip


def read_jsonl(path: Path, fix: str = "delete or repair that line") -> list[Any]:
    """The records of an append-only JSON-lines file. A torn last line (a writer killed mid-append: no final newline,
    not parseable) is dropped with a warning, keeping every complete record; any other bad line is an error naming
    the file and the line."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # the last line has no newline after it: an interrupted append
                logger.warning("%s: dropped a torn last line (%d bytes, an interrupted write)", path, len(line))
                continue
            raise CorruptFileError(f"{path} line {number} is not valid JSON ({err}); {fix}") from None
    return records


def append_jsonl(path: Path, record: Any) -> None:
    """Append one JSON line and flush. A torn last line left by a killed writer is cut off first: otherwise this
    record would be glued to it, and both lost to every reader."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
                logger.warning("%s: cut off a torn last line (an interrupted write) before appending", path)
        f.write((json.dumps(record) + "\n").encode())
        f.flush()


# What a torch-saved NumPy array unpickles through: torch's weights-only unpickler allows these and nothing else.
def _numpy_globals() -> list:
    import numpy as np

    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    dtypes = [
        getattr(np.dtypes, f"{k}DType") for k in ("Float64", "Float32", "Int64", "Int32", "UInt32", "UInt8", "Bool")
    ]
    return [(reconstruct, "numpy.core.multiarray._reconstruct"), reconstruct, np.ndarray, np.dtype, *dtypes]


def torch_load_arrays(path: Path, fix: str) -> Any:
    """A file written by `torch.save` holding tensors and NumPy arrays (LIBERO's init states), read with torch's
    weights-only unpickler and an allowlist of NumPy's array constructors: a planted pickle that calls anything else
    is refused, never run. Any failure raises one error naming the file and `fix`."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {fix}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise CorruptFileError(
            f"{path} is truncated, corrupt or holds more than arrays (refused to unpickle it: {first[:300]}); {fix}"
        ) from None


def check_finite(tensors: dict, source: Path | str) -> None:
    """Raise naming the first floating-point tensor of `source` that holds NaN or inf (one pass over each)."""
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = tensor[~torch.isfinite(tensor)].flatten()[0].item()
            raise FloatingPointError(
                f"{source}: tensor {name} holds non-finite values (first: {bad}): these weights were saved after the "
                "training diverged; use an earlier checkpoint"
            )


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bitwise: used on 8-byte TFRecord length headers only, so speed does not matter."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def check_tfrecord(path: Path, fix: str) -> int:
    """Walk a TFRecord file's framing (per record: 8-byte length, its masked CRC-32C, the data, the data's CRC)
    without reading the data: a truncated shard, or garbage where a shard should be, raises one error naming the file
    and the byte offset, in milliseconds and before TensorFlow is imported. Returns the number of records."""
    import struct

    path, position, records = Path(path), 0, 0
    size = path.stat().st_size
    with open(path, "rb") as f:
        while position < size:
            header = f.read(12)
            problem = None
            if len(header) < 12:
                problem = "it ends inside a record header (truncated)"
            else:
                (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
                if crc != _masked_crc(header[:8]):
                    problem = "a record header fails its checksum (garbage or a damaged copy)"
                elif position + 16 + length > size:
                    problem = f"a record of {length} bytes runs past the end of the file (truncated)"
            if problem:
                raise CorruptFileError(f"{path} is not a valid TFRecord file: at byte {position} of {size}, {problem}; "
                                       f"{fix}")  # fmt: skip
            position += 16 + length
            records += 1
            f.seek(position)
    return records

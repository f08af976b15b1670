"""Where a fine-tuning run's model comes from: an official-format checkpoint (`vla_path`: a directory or hub id) or
a random initialisation of a named size preset, optionally with its Llama weights quantized. Every check here runs
before any weight is read, so a bad path or a missing package fails in seconds, not after loading 15 GB."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla.checkpoint_int8 import INT8_KEY
from vla.files import read_json
from vla.lora import LoraConfig
from vla.normalization import load_dataset_statistics
from vla.run_dir import STATISTICS_FILE
from vla.runtime import check_quantization


@dataclass
class ModelConfig:
    """Fine-tuning section `model`: the starting weights and how the frozen ones are stored."""

    vla_path: str | None = "openvla/openvla-7b"  # official-format checkpoint dir or HF hub id; null = random init
    preset: str = "tiny"  # size preset of a random init (vla_path null): tiny, micro, small, small256 or full
    tokenizer_path: Path | None = None  # Llama-2 tokenizer dir (with tokenizer.model); needed only for a random init
    quantization: str | None = None  # frozen LLM weights: null (weights_dtype), "8bit" (LLM.int8), "4bit" (nf4) or
    # "fp8" (e4m3 on FP8 tensor cores: H100 / H200 / L4; vla.fp8_linear)
    unnorm_key: str | None = None  # use the checkpoint's action statistics under this key; null = the data's own
    weights_dtype: str | None = None  # on GPU; null: float32 if every weight trains (full fine-tune), else bfloat16

    @property
    def name(self) -> str:
        """The model's part of a run id: the checkpoint's folder name, or `<preset>-random`."""
        return Path(self.vla_path).name if self.vla_path else f"{self.preset}-random"


WEIGHTS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # ModelConfig.weights_dtype's values


def check_model(cfg: ModelConfig, lora: LoraConfig, save_merged: bool) -> None:
    """Raise one clear error for a model source, quantization or statistics key that cannot work (no weights read)."""
    if cfg.vla_path is None:
        if cfg.tokenizer_path is None or not (Path(cfg.tokenizer_path) / "tokenizer.model").is_file():
            raise FileNotFoundError(
                f"random init (vla_path null) needs tokenizer_path = a Llama-2 tokenizer dir with tokenizer.model; "
                f"got {cfg.tokenizer_path}"
            )
        if cfg.unnorm_key is not None:
            raise ValueError(f"unnorm_key {cfg.unnorm_key!r} needs a checkpoint (vla_path) to take statistics from")
    else:
        looks_local = cfg.vla_path.startswith((".", "/", "~")) or cfg.vla_path.count("/") != 1  # hub ids: "org/name"
        if looks_local and not Path(cfg.vla_path).expanduser().exists():
            raise FileNotFoundError(
                f"vla_path {cfg.vla_path} does not exist (and is not a hub id like openvla/openvla-7b)"
            )
        if Path(cfg.vla_path).exists() and not (Path(cfg.vla_path) / "config.json").is_file():
            raise FileNotFoundError(f"vla_path {cfg.vla_path} has no config.json; point it at an OpenVLA checkpoint")
        if Path(cfg.vla_path).exists() and INT8_KEY in read_json(Path(cfg.vla_path) / "config.json"):
            raise ValueError(f"vla_path {cfg.vla_path} is an int8 copy for inference (rounded weights, lm_head's "
                             "action rows only): fine-tune from the float checkpoint it was converted from, or from a "
                             "bf16 copy of it (scripts/convert_checkpoint.py --dtype bfloat16)")  # fmt: skip
        if cfg.unnorm_key is not None:
            checkpoint_statistics(cfg.vla_path, cfg.unnorm_key)
    if cfg.weights_dtype is not None and cfg.weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype {cfg.weights_dtype!r} is not null, 'float32' or 'bfloat16'")
    _check_quantization(cfg, lora, save_merged)


def _check_quantization(cfg: ModelConfig, lora: LoraConfig, save_merged: bool) -> None:
    cuda = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None  # training's
    check_quantization(cfg.quantization, cuda)
    if cfg.quantization is None:
        return
    if not lora.enabled:
        raise ValueError(f"quantization {cfg.quantization!r} freezes the LLM weights: set lora.enabled true")
    if save_merged and cfg.vla_path is None:
        raise ValueError("run.save_merged re-reads unquantized weights from vla_path; a random init has none: set "
                         "model.quantization null or run.save_merged false")  # fmt: skip
    if cfg.quantization == "fp8":
        return  # torch's own FP8 matmuls (vla.fp8_linear), no bitsandbytes
    try:
        importlib.import_module("bitsandbytes")
    except Exception as err:  # noqa: BLE001 - a broken install raises more than ImportError; re-raised with the fix
        raise ImportError(
            f"quantization {cfg.quantization!r} needs bitsandbytes, which does not import ({type(err).__name__}: "
            f"{err}); `pip install bitsandbytes==0.50.2`, or set quantization null"
        ) from None


def _hub_file(vla_path: str, name: str) -> Path | None:
    """One small file of a hub checkpoint; None if the repository has no such file. Any other failure (offline with
    nothing cached, unknown repository, network) is raised with what to do about it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(vla_path, name))
    except RemoteEntryNotFoundError:  # the repository exists but has no such file (dataset_statistics.json is optional)
        return None
    except Exception as err:
        raise OSError(
            f"cannot fetch {name} of {vla_path} from the Hugging Face hub ({type(err).__name__}: {err}); download the "
            "checkpoint once with network (HF_HUB_OFFLINE=0) or point vla_path at a local checkpoint directory"
        ) from err


def checkpoint_statistics(vla_path: str, unnorm_key: str) -> dict[str, Any]:
    """The statistics entry `unnorm_key` of a checkpoint (its dataset_statistics.json or config.json `norm_stats`),
    read without loading weights. KeyError lists the keys it holds."""
    stats: dict[str, Any] = {}
    local = Path(vla_path).exists()
    for name in ("config.json", STATISTICS_FILE):
        path = Path(vla_path) / name if local else _hub_file(vla_path, name)
        if (
            path is not None
            and path.is_file()
            and (name != "config.json" or "norm_stats" in json.loads(path.read_text()))
        ):
            stats.update(load_dataset_statistics(path))
    if unnorm_key not in stats:
        raise KeyError(
            f"checkpoint {vla_path} has no statistics for unnorm_key {unnorm_key!r}; it holds {sorted(stats)}. "
            "Set unnorm_key to one of them, or to null to use the dataset's own statistics"
        )
    return stats[unnorm_key]


def weights_dtype(cfg: ModelConfig, lora: LoraConfig, device: torch.device) -> torch.dtype:
    """The dtype `build_model` stores weights in. CPU: float32. CUDA: `cfg.weights_dtype` when set; else float32 when
    every weight trains (full fine-tuning, e.g. from random weights), since an AdamW update under half a bfloat16
    weight's rounding step (2^-8 of its size: a norm gain of 1.0 ignores any step under ~0.002) would be lost, and
    training runs under bf16 autocast either way; bfloat16 when only LoRA adapters train (they stay float32, as peft
    makes them) or the LLM is quantized. Float32 doubles the weights' and AdamW's memory: a full fine-tune of the
    7.5B model needs ~120 GB before activations (`weights_dtype: bfloat16` halves it, losing those updates)."""
    if device.type != "cuda":
        return torch.float32
    if cfg.weights_dtype is not None:
        return WEIGHTS_DTYPES[cfg.weights_dtype]
    full_fine_tune = not lora.enabled and cfg.quantization is None
    return torch.float32 if full_fine_tune else torch.bfloat16


def build_model(cfg: ModelConfig, lora: LoraConfig, device: torch.device) -> nn.Module:
    """The VLA to fine-tune (with LoRA adapters when `lora.enabled`), on `device`, weights in `weights_dtype`."""
    from vla.checkpoint import load_tokenizer
    from vla.model import VLA, build_vla
    from vla.model_config import VLAConfig

    dtype = weights_dtype(cfg, lora, device)
    if cfg.vla_path is not None:
        return VLA.from_pretrained(
            cfg.vla_path, device=device, dtype=dtype, quantization=cfg.quantization, lora=lora.settings()
        )
    config, tokenizer = VLAConfig.preset(cfg.preset), load_tokenizer(cfg.tokenizer_path)
    return build_vla(config, tokenizer, quantization=cfg.quantization, lora=lora.settings(), device=device, dtype=dtype)


def parameter_line(model: nn.Module) -> str:
    """peft's `print_trainable_parameters` line (4-bit weights count twice their packed size, as peft counts)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1) for p in model.parameters())
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"

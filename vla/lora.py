"""Quantization of the Llama (bitsandbytes LLM.int8 / nf4) and the LoRA adapters (peft) of the official recipe:
injection, freezing, adapter files, merging."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vla.files import replace_directory
from vla.fp8_linear import is_fp8

Quantization = Literal["8bit", "4bit", "fp8"]  # fp8: vla.fp8_linear, after loading; the others: bitsandbytes

# Base names that peft 0.11.1's "all-linear" collected on OpenVLA's official fine-tuning: every Linear of both towers (incl.
# SigLIP's unused attn_pool), the projector, every Llama projection and lm_head; `proj` also catches both towers'
# Conv2d `patch_embed.proj`. Listed explicitly because current peft's "all-linear" skips lm_head and convolutions.
LORA_TARGETS = (
    "qkv", "proj", "fc1", "fc2", "q", "kv", "fc3",
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head",
)  # fmt: skip
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."  # key prefix of adapters saved by peft's PeftModel (official finetune.py)


@dataclass
class LoraSettings:
    """LoRA hyper-parameters; defaults are the official fine-tuning recipe."""

    rank: int = 32  # r
    alpha: int | None = None  # scale numerator (scale = alpha / r); None -> min(rank, 16), as the official script
    dropout: float = 0.0  # dropout on the adapter input
    init: str = "gaussian"  # peft init_lora_weights: A ~ N(0, 1/r^2), B = 0 (the adapter starts as a no-op)

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")

    def peft_config(self):
        from peft import LoraConfig as PeftLoraConfig

        return PeftLoraConfig(
            r=self.rank,
            lora_alpha=min(self.rank, 16) if self.alpha is None else self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(LORA_TARGETS),
            init_lora_weights=self.init,
        )


@dataclass
class LoraConfig:
    """Fine-tuning section `lora`: adapters only (the official recipe) or every weight."""

    enabled: bool = True  # train LoRA adapters only; false = full fine-tuning (every weight, no quantization)
    rank: int = 32  # LoRA r; the scale numerator alpha is min(r, 16), as the official script
    dropout: float = 0.0  # dropout probability on each adapter's input

    def settings(self) -> LoraSettings | None:
        """The adapters to inject, or None for full fine-tuning."""
        return LoraSettings(rank=self.rank, dropout=self.dropout) if self.enabled else None


def quantization_config(quantization: Quantization | None, compute_dtype: torch.dtype = torch.bfloat16):
    """`BitsAndBytesConfig` for the Llama: `"8bit"` = LLM.int8 (the project default for fine-tuning), `"4bit"` = nf4
    with bf16 compute (the official optional path), None = no quantization; "fp8" loads unquantized (vla.fp8_linear
    converts the weights after loading)."""
    if quantization in (None, "fp8"):
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    raise ValueError(f"quantization must be None, '8bit' or '4bit', got {quantization!r}")


def reset_cpu_4bit_packing(model: nn.Module) -> int:
    """Stop bitsandbytes' CPU repacking of nf4 weights, which silently cuts gradients through a Linear4bit after any
    eval-mode no-grad forward (ENVIRONMENT.md). A no-op on CUDA and without 4-bit layers. Returns layers touched."""
    touched = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> peft LoRA layer, for every adapted module."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def apply_lora(model: nn.Module, settings: LoraSettings) -> None:
    """Inject LoRA adapters into `model` in place (no wrapper: `model` keeps its methods) and freeze the rest.
    Adapter weights are float32 on the device of the layer they adapt."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(settings.peft_config(), model)
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    reset_cpu_4bit_packing(model)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, as peft's `print_trainable_parameters` reports for unquantized models."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def lora_parameter_count(model: nn.Module, rank: int) -> int:
    """Adapter parameters that LoRA with `rank` adds to a model *without* adapters, computed from layer shapes:
    r * (in + out) per Linear, r * (in * kh * kw) + r * out per Conv2d (A: conv r filters, B: 1x1 conv)."""
    total = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in LORA_TARGETS:
            continue
        if isinstance(module, nn.Linear):
            total += rank * (module.in_features + module.out_features)
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += rank * module.in_channels * kh * kw + rank * module.out_channels
    return total


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under peft's file naming (`base_model.model.<module>.lora_A.weight`)."""
    from peft import get_peft_model_state_dict

    return {
        _PEFT_PREFIX + k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
    }


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` (peft's format: `PeftModel.from_pretrained` reads
    it) atomically into `directory`, replacing an earlier adapter there."""
    from safetensors.torch import save_file

    if not lora_layers(model):
        raise ValueError("model has no LoRA adapters to save; build it with lora=LoraSettings()")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        model.peft_config["default"].save_pretrained(str(tmp))
        save_file(adapter_state_dict(model), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        replace_directory(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_adapter(model: nn.Module, directory: str | Path) -> None:
    """Inject the adapters saved in `directory` (by `save_adapter` or peft's `save_pretrained`) and freeze the rest."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / ADAPTER_WEIGHTS).is_file() or not (directory / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{directory} lacks adapter_config.json / {ADAPTER_WEIGHTS}; pass an adapter directory")
    config = PeftLoraConfig.from_pretrained(str(directory))
    inject_adapter_in_model(config, model)
    weights = {k.removeprefix(_PEFT_PREFIX): v for k, v in load_file(str(directory / ADAPTER_WEIGHTS)).items()}
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise ValueError(
            f"adapter in {directory} has weights for modules this model lacks: {result.unexpected_keys[:5]}"
        )
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name
    reset_cpu_4bit_packing(model)


def is_quantized(layer: nn.Module) -> bool:
    """Whether `layer` holds rounded weights (a bitsandbytes int8 / nf4 layer, or vla.fp8_linear's e4m3): its float
    source is the checkpoint file it was loaded from, never the layer itself."""
    return type(layer).__module__.startswith("bitsandbytes") or is_fp8(layer)


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (W += scale * B @ A) and remove the adapter layers, in place.
    Refuses quantized layers: merge those from the unquantized source with `save_official_checkpoint`."""
    for name, layer in lora_layers(model).items():
        base = layer.get_base_layer()
        if not isinstance(base, (nn.Linear, nn.Conv2d)) or is_quantized(base):
            raise ValueError(f"{name} is quantized ({type(base).__name__}); merge it with save_official_checkpoint")
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, base)
    if hasattr(model, "peft_config"):
        del model.peft_config

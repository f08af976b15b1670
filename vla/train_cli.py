"""The fine-tuning command line: `--config FILE` (= `--config_path`), nested overrides (`--optim.batch_size 8`), a bare
`--resume`, and two kinds of flat names mapped onto the nested fields, in argv and in config files alike:
- the official OpenVLA fine-tuning flags (`--batch_size`, `--use_lora`, ...): accepted as they are, so official
  commands run unchanged (docs/DROP_IN.md);
- this project's earlier flat keys (`--synthetic_data true`, `--quantization 8bit`, ...): still accepted, with a
  FutureWarning naming the new key."""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

from vla.cli import Mapping, parse_with_config, split_argv, to, truthy, yaml_value
from vla.files import CorruptFileError, read_yaml
from vla.train_config import TrainConfig

# The official FinetuneConfig flags -> our fields (see docs/DROP_IN.md for the defaults that differ)
OFFICIAL_FLAGS: dict[str, Mapping] = {
    "vla_path": to("model.vla_path"),
    "data_root_dir": to("data.data_root_dir"),
    "dataset_name": to("data.dataset_name"),
    "run_root_dir": to("run.root_dir"),
    "adapter_tmp_dir": to("run.adapter_dir"),
    "batch_size": to("optim.batch_size"),
    "max_steps": to("optim.max_steps"),
    "save_steps": to("optim.save_steps"),
    "learning_rate": to("optim.learning_rate"),
    "grad_accumulation_steps": to("optim.grad_accumulation_steps"),
    "image_aug": to("data.image_aug"),
    "shuffle_buffer_size": to("data.shuffle_buffer_size"),
    "save_latest_checkpoint_only": to("run.save_latest_only"),
    "use_lora": to("lora.enabled"),
    "lora_rank": to("lora.rank"),
    "lora_dropout": to("lora.dropout"),
    "use_quantization": lambda v: [("model.quantization", "4bit" if truthy(v) else None)],  # official: 4-bit nf4
    "wandb_project": to("logging.wandb_project"),
    "wandb_entity": to("logging.wandb_entity"),
    "run_id_note": to("run.id_note"),
    "resume": to("run.resume"),  # README's `--resume` (bare or with a value)
}
# This project's flat keys before the sections existed -> the nested field (deprecated)
LEGACY_KEYS: dict[str, Mapping] = {
    "model_preset": to("model.preset"),
    "tokenizer_path": to("model.tokenizer_path"),
    "quantization": to("model.quantization"),
    "unnorm_key": to("model.unnorm_key"),
    "synthetic_data": lambda v: [("data.source", "synthetic")] if truthy(v) else [],
    "video_frames_dir": lambda v: [] if v in (None, "null") else [("data.source", "video_frames"), ("data.frames_dir", v)],
    **{k: to(f"optim.{k}") for k in ("lr_schedule", "warmup_steps", "max_grad_norm", "weight_decay", "seed")},
    **{k: to(f"speed.{k}") for k in ("activation_checkpointing", "checkpoint_llm_layers", "checkpoint_vision",
                                      "lora_bf16_inputs", "lora_fused", "int8_weight_only", "expandable_segments")},
    **{k: to(f"logging.{k}") for k in ("log_steps", "smoothing_window", "wandb_mode")},
    "run_id": to("run.id"),
    "save_merged": to("run.save_merged"),
    "device": to("run.device"),
}  # fmt: skip
# Short names for nested fields (not official fine-tuning flags): `--data_mix` as OpenVLA's pre-training names it
ALIASES: dict[str, Mapping] = {"data_mix": to("data.mix")}
SECTIONS = tuple(f.name for f in fields(TrainConfig))


def _translate(key: str, value: Any, deprecated: list[str]) -> list[tuple[str, Any]] | None:
    """Flat `key` -> [(nested key, value)], or None when `key` is not a flat name."""
    if key in OFFICIAL_FLAGS:
        return OFFICIAL_FLAGS[key](value)
    if key in ALIASES:
        return ALIASES[key](value)
    if key in LEGACY_KEYS:
        pairs = LEGACY_KEYS[key](value)
        deprecated.append(f"{key} -> {', '.join(k for k, _ in pairs) or '(nothing: the default)'}")
        return pairs
    return None


def _warn(deprecated: list[str], where: str) -> None:
    if deprecated:
        warnings.warn(
            f"deprecated flat keys in {where}: {'; '.join(deprecated)}. Use the nested names (e.g. --optim.seed, "
            "--data.source synthetic); the flat ones will be removed.", FutureWarning, stacklevel=3,
        )  # fmt: skip


def upgrade_config(raw: dict[str, Any], where: str = "the config file") -> dict[str, Any]:
    """A config dict with flat keys -> the nested layout of `TrainConfig` (nested sections are kept as they are)."""
    out: dict[str, Any] = {}
    deprecated: list[str] = []
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            out.setdefault(key, {}).update(value)
            continue
        pairs = _translate(key, value, deprecated)
        if pairs is None:
            out[key] = value  # unknown: draccus names it in its error
            continue
        for nested, new in pairs:
            section, name = nested.split(".")
            out.setdefault(section, {})[name] = new
    _warn(deprecated, where)
    return out


def upgrade_argv(argv: list[str]) -> tuple[Path | None, list[str]]:
    """(config path, argv with nested names only). `--flag value` and `--flag=value` forms; a bare `--resume`."""
    config, flags = split_argv(argv, bare=("resume",))
    out, deprecated = [], []
    for name, value, given in flags:
        pairs = _translate(name, value, deprecated) if name else None
        out.extend(given if pairs is None else (f"--{key}={yaml_value(new)}" for key, new in pairs))
    _warn(deprecated, "the command line")
    return config, out


DESCRIPTION = """Fine-tune a VLA (every field: vla.train_config.TrainConfig and its sections).
The official OpenVLA flags (--vla_path, --data_root_dir, --dataset_name, --batch_size, --use_lora, ...) are accepted
too; docs/DROP_IN.md maps each to the fields below."""


def parse(argv: list[str]) -> TrainConfig:
    """The TrainConfig of a command line (`--config FILE` first, then the overrides)."""
    config, args = upgrade_argv(list(argv))
    return parse_with_config(TrainConfig, DESCRIPTION, config, args, _read_config)


def _read_config(config: Path) -> dict[str, Any]:
    """A config file in the nested layout draccus reads."""
    raw = read_yaml(config) or {}
    if not isinstance(raw, dict):
        raise CorruptFileError(f"{config} holds a {type(raw).__name__}, not a mapping of config fields; see configs/")
    return upgrade_config(raw, where=str(config))

"""The fine-tuning command line: `--config FILE` (= `--config_path`), nested overrides (`--optim.batch_size 8`), a bare
`--resume`, and two kinds of flat names mapped onto the nested fields, in argv and in config files alike:
- the official OpenVLA fine-tuning flags (`--batch_size`, `--use_lora`, ...): accepted as they are, so official
  commands run unchanged (docs/DROP_IN.md);
- this project's earlier flat keys (`--synthetic_data true`, `--quantization 8bit`, ...): still accepted, with a
  FutureWarning naming the new key."""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from draccus.argparsing import ArgumentParser
from draccus.help_formatter import SimpleHelpFormatter

from vla.files import CorruptFileError, read_yaml
from vla.train_config import TrainConfig

Mapping = Callable[[Any], list[tuple[str, Any]]]


def _to(key: str) -> Mapping:
    return lambda value: [(key, value)]


def _truthy(value: Any) -> bool:
    value = yaml.safe_load(value) if isinstance(value, str) else value
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


# The official FinetuneConfig flags -> our fields (see docs/DROP_IN.md for the defaults that differ)
OFFICIAL_FLAGS: dict[str, Mapping] = {
    "vla_path": _to("model.vla_path"),
    "data_root_dir": _to("data.data_root_dir"),
    "dataset_name": _to("data.dataset_name"),
    "run_root_dir": _to("run.root_dir"),
    "adapter_tmp_dir": _to("run.adapter_dir"),
    "batch_size": _to("optim.batch_size"),
    "max_steps": _to("optim.max_steps"),
    "save_steps": _to("optim.save_steps"),
    "learning_rate": _to("optim.learning_rate"),
    "grad_accumulation_steps": _to("optim.grad_accumulation_steps"),
    "image_aug": _to("data.image_aug"),
    "shuffle_buffer_size": _to("data.shuffle_buffer_size"),
    "save_latest_checkpoint_only": _to("run.save_latest_only"),
    "use_lora": _to("lora.enabled"),
    "lora_rank": _to("lora.rank"),
    "lora_dropout": _to("lora.dropout"),
    "use_quantization": lambda v: [("model.quantization", "4bit" if _truthy(v) else None)],  # official: 4-bit nf4
    "wandb_project": _to("logging.wandb_project"),
    "wandb_entity": _to("logging.wandb_entity"),
    "run_id_note": _to("run.id_note"),
    "resume": _to("run.resume"),  # README's `--resume` (bare or with a value)
}
# This project's flat keys before the sections existed -> the nested field (deprecated)
LEGACY_KEYS: dict[str, Mapping] = {
    "model_preset": _to("model.preset"),
    "tokenizer_path": _to("model.tokenizer_path"),
    "quantization": _to("model.quantization"),
    "unnorm_key": _to("model.unnorm_key"),
    "synthetic_data": lambda v: [("data.source", "synthetic")] if _truthy(v) else [],
    "video_frames_dir": lambda v: [] if v in (None, "null") else [("data.source", "video_frames"), ("data.frames_dir", v)],
    **{k: _to(f"optim.{k}") for k in ("lr_schedule", "warmup_steps", "max_grad_norm", "weight_decay", "seed")},
    **{k: _to(f"speed.{k}") for k in ("activation_checkpointing", "checkpoint_llm_layers", "checkpoint_vision",
                                      "lora_bf16_inputs", "lora_fused", "int8_weight_only", "expandable_segments")},
    **{k: _to(f"logging.{k}") for k in ("log_steps", "smoothing_window", "wandb_mode")},
    "run_id": _to("run.id"),
    "save_merged": _to("run.save_merged"),
    "device": _to("run.device"),
}  # fmt: skip
# Short names for nested fields (not official fine-tuning flags): `--data_mix` as OpenVLA's pre-training names it
ALIASES: dict[str, Mapping] = {"data_mix": _to("data.mix")}
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
    config, out, deprecated, i = None, [], [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        takes_next = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if name == "resume" and not eq and not takes_next:
            value, takes_next = "true", False  # bare --resume
        elif takes_next:
            value = argv[i + 1]
        i += 2 if takes_next else 1
        if name in ("config", "config_path"):
            config = Path(value)
            continue
        pairs = _translate(name, value, deprecated) if name else None
        if pairs is None:
            out.extend([arg, value] if takes_next else [arg])
            continue
        out.extend(f"--{key}={_yaml_value(new)}" for key, new in pairs)
    _warn(deprecated, "the command line")
    return config, out


def _yaml_value(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
    )


class _HelpFormatter(SimpleHelpFormatter):
    """draccus' formatter, with `%` in field comments printed as is (argparse would read it as a format spec)."""

    def _get_help_string(self, action):
        action = copy.copy(action)
        action.help = (action.help or "").replace("%", "%%")
        return super()._get_help_string(action)


DESCRIPTION = """Fine-tune a VLA (every field: vla.train_config.TrainConfig and its sections).
The official OpenVLA flags (--vla_path, --data_root_dir, --dataset_name, --batch_size, --use_lora, ...) are accepted
too; docs/DROP_IN.md maps each to the fields below."""


def parse(argv: list[str]) -> TrainConfig:
    """The TrainConfig of a command line (`--config FILE` first, then the overrides)."""
    config, args = upgrade_argv(list(argv))
    parser = ArgumentParser(TrainConfig, formatter_class=_HelpFormatter, description=DESCRIPTION)
    if config is None:
        return parser.parse_args(args)
    raw = read_yaml(config) or {}
    if not isinstance(raw, dict):
        raise CorruptFileError(f"{config} holds a {type(raw).__name__}, not a mapping of config fields; see configs/")
    nested = upgrade_config(raw, where=str(config))
    with tempfile.TemporaryDirectory() as tmp:  # draccus merges a file with the overrides: hand it the nested one
        path = Path(tmp) / config.name
        path.write_text(yaml.safe_dump(nested, sort_keys=False))
        return parser.parse_args([f"--config_path={path}", *args])

"""The evaluation command line: `EvalConfig`'s own flags, plus the official OpenVLA `run_libero_eval.py` names
(`--pretrained_checkpoint`, `--task_suite_name`, `--load_in_8bit`, ...) mapped onto them, in argv and in a
`--config` YAML file alike, so official commands run unchanged (docs/DROP_IN.md). Names the official script shares
with ours (`--num_trials_per_task`, `--center_crop`, `--seed`, `--model_family`, `--wandb_project`, `--wandb_entity`,
`--local_log_dir`, `--run_id_note`) are EvalConfig fields as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vla.cli import Mapping, parse_with_config, split_argv, to, truthy, yaml_value
from vla.evaluation import EvalConfig


def _quantization(bits: str) -> Mapping:
    return lambda value: [("quantization", bits)] if truthy(value) else []


# The official GenerateConfig flags whose names differ from ours -> our fields
OFFICIAL_FLAGS: dict[str, Mapping] = {
    "pretrained_checkpoint": to("checkpoint"),
    "task_suite_name": to("task_suite"),
    "load_in_8bit": _quantization("8bit"),
    "load_in_4bit": _quantization("4bit"),
    "use_wandb": to("wandb"),
}


def _plain(value: Any) -> Any:
    """A flag's value as draccus reads it ("True" == "true" == True), for comparing two flags' values."""
    try:
        return yaml.safe_load(value) if isinstance(value, str) else value
    except yaml.YAMLError:
        return value


def _translate(flag: str, value: Any, assigned: _Assignments) -> list[tuple[str, Any]]:
    """[(EvalConfig field, value)] that `--flag value` sets (official names mapped, ours as they are)."""
    try:
        pairs = OFFICIAL_FLAGS[flag](value) if flag in OFFICIAL_FLAGS else [(flag, value)]
    except ValueError as err:
        raise ValueError(f"--{flag}: {err}") from None
    for field, new in pairs:
        assigned.add(flag, field, new)
    return pairs


class _Assignments:
    """Field -> (flag, value) as the flags set them: two flags setting one field to different values is an error
    (`--load_in_8bit True --load_in_4bit True`, `--checkpoint A --pretrained_checkpoint B`), not last-one-wins."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, Any]] = {}

    def add(self, flag: str, field: str, value: Any) -> None:
        earlier = self.seen.setdefault(field, (flag, value))
        if earlier[0] != flag and _plain(earlier[1]) != _plain(value):
            raise ValueError(
                f"--{earlier[0]} and --{flag} both set {field} ({earlier[1]!r} vs {value!r}): pass only one of them"
                + (" (8-bit and 4-bit loading are exclusive, as in the official script)" if field == "quantization"
                   else "")
            )  # fmt: skip


def upgrade_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A config dict with official keys -> EvalConfig's keys (others kept: draccus names unknown ones)."""
    assigned = _Assignments()
    return {field: new for key, value in raw.items() for field, new in _translate(key, value, assigned)}


def upgrade_argv(argv: list[str]) -> tuple[Path | None, list[str]]:
    """(config path, argv with EvalConfig's names only). `--flag value` and `--flag=value` forms."""
    config, flags = split_argv(argv)
    out, assigned = [], _Assignments()
    for name, value, given in flags:
        if name in OFFICIAL_FLAGS:
            out.extend(f"--{field}={yaml_value(new)}" for field, new in _translate(name, value, assigned))
        else:
            if name:
                _translate(name, value, assigned)
            out.extend(given)
    return config, out


DESCRIPTION = """Evaluate a policy on a LIBERO suite (every field: vla.evaluation.EvalConfig).
The official run_libero_eval.py flags are accepted too: --pretrained_checkpoint (= --checkpoint), --task_suite_name
(= --task_suite), --load_in_8bit / --load_in_4bit (= --quantization 8bit / 4bit), --use_wandb (= --wandb); the other
official names are fields below. docs/DROP_IN.md maps each and lists the defaults that differ."""


def parse(argv: list[str]) -> EvalConfig:
    """The EvalConfig of a command line (`--config FILE` first, then the flags)."""
    config, args = upgrade_argv(list(argv))
    return parse_with_config(EvalConfig, DESCRIPTION, config, args, _read_config)


def _read_config(config: Path) -> dict[str, Any]:
    if not config.is_file():
        raise FileNotFoundError(f"config file {config} does not exist")
    return upgrade_config(yaml.safe_load(config.read_text()) or {})

"""The evaluation command line: `EvalConfig`'s own flags, plus the official OpenVLA `run_libero_eval.py` names
(`--pretrained_checkpoint`, `--task_suite_name`, `--load_in_8bit`, ...) mapped onto them, in argv and in a
`--config` YAML file alike, so official commands run unchanged (docs/DROP_IN.md). Names the official script shares
with ours (`--num_trials_per_task`, `--center_crop`, `--seed`, `--model_family`, `--wandb_project`, `--wandb_entity`,
`--local_log_dir`, `--run_id_note`) are EvalConfig fields as they are."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from draccus.argparsing import ArgumentParser

from vla.evaluation import EvalConfig
from vla.train_cli import Mapping, _HelpFormatter, _to, _truthy, _yaml_value


def _quantization(bits: str) -> Mapping:
    return lambda value: [("quantization", bits)] if _truthy(value) else []


# The official GenerateConfig flags whose names differ from ours -> our fields
OFFICIAL_FLAGS: dict[str, Mapping] = {
    "pretrained_checkpoint": _to("checkpoint"),
    "task_suite_name": _to("task_suite"),
    "load_in_8bit": _quantization("8bit"),
    "load_in_4bit": _quantization("4bit"),
    "use_wandb": _to("wandb"),
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
    config, out, i = None, [], 0
    assigned = _Assignments()
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        takes_next = bool(name) and not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if takes_next:
            value = argv[i + 1]
        i += 2 if takes_next else 1
        if name in ("config", "config_path"):
            config = Path(value)
            continue
        if name not in OFFICIAL_FLAGS:
            if name:
                _translate(name, value, assigned)
            out.extend([arg, value] if takes_next else [arg])
            continue
        out.extend(f"--{field}={_yaml_value(new)}" for field, new in _translate(name, value, assigned))
    return config, out


DESCRIPTION = """Evaluate a policy on a LIBERO suite (every field: vla.evaluation.EvalConfig).
The official run_libero_eval.py flags are accepted too: --pretrained_checkpoint (= --checkpoint), --task_suite_name
(= --task_suite), --load_in_8bit / --load_in_4bit (= --quantization 8bit / 4bit), --use_wandb (= --wandb); the other
official names are fields below. docs/DROP_IN.md maps each and lists the defaults that differ."""


def parse(argv: list[str]) -> EvalConfig:
    """The EvalConfig of a command line (`--config FILE` first, then the flags)."""
    config, args = upgrade_argv(list(argv))
    parser = ArgumentParser(EvalConfig, formatter_class=_HelpFormatter, description=DESCRIPTION)
    if config is None:
        return parser.parse_args(args)
    if not config.is_file():
        raise FileNotFoundError(f"config file {config} does not exist")
    flat = upgrade_config(yaml.safe_load(config.read_text()) or {})
    with tempfile.TemporaryDirectory() as tmp:  # draccus merges a file with the flags: hand it our names
        path = Path(tmp) / config.name
        path.write_text(yaml.safe_dump(flat, sort_keys=False))
        return parser.parse_args([f"--config_path={path}", *args])

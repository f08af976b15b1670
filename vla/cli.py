"""What the fine-tuning and evaluation command lines share (`vla.train_cli`, `vla.eval_cli`): flag mappings, the
argv splitter, the help formatter and the draccus parse over an optional config file."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from draccus.argparsing import ArgumentParser
from draccus.help_formatter import SimpleHelpFormatter

Mapping = Callable[[Any], list[tuple[str, Any]]]  # a flag's value -> [(field, value), ...]


def to(key: str) -> Mapping:
    """The mapping of a flag onto the one field `key`, value unchanged."""
    return lambda value: [(key, value)]


def truthy(value: Any) -> bool:
    value = yaml.safe_load(value) if isinstance(value, str) else value
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def yaml_value(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
    )


def split_argv(argv: list[str], bare: tuple[str, ...] = ()) -> tuple[Path | None, list[tuple[str, str, list[str]]]]:
    """(the `--config` / `--config_path` file or None, every other argument as (flag name, value, the arguments as
    given)). `--flag value` and `--flag=value` forms; a flag named in `bare` given alone is "true"; an argument that
    is not a flag has the name ""."""
    config, flags, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        takes_next = bool(name) and not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if takes_next:
            value = argv[i + 1]
        elif name in bare and not eq:
            value = "true"
        given = argv[i : i + 2] if takes_next else [arg]
        i += len(given)
        if name in ("config", "config_path"):
            config = Path(value)
        else:
            flags.append((name, value, given))
    return config, flags


class HelpFormatter(SimpleHelpFormatter):
    """draccus' formatter, with `%` in field comments printed as is (argparse would read it as a format spec)."""

    def _get_help_string(self, action):
        action = copy.copy(action)
        action.help = (action.help or "").replace("%", "%%")
        return super()._get_help_string(action)


def parse_with_config(cls: type, description: str, config: Path | None, args: list[str],
                      read_config: Callable[[Path], dict[str, Any]]):  # fmt: skip
    """The `cls` of the flags `args` over the config file `config` (None: no file), which `read_config` turns into
    a dict of `cls`'s own names."""
    parser = ArgumentParser(cls, formatter_class=HelpFormatter, description=description)
    if config is None:
        return parser.parse_args(args)
    fields = read_config(config)
    with tempfile.TemporaryDirectory() as tmp:  # draccus merges a file with the flags: hand it our names
        path = Path(tmp) / config.name
        path.write_text(yaml.safe_dump(fields, sort_keys=False))
        return parser.parse_args([f"--config_path={path}", *args])

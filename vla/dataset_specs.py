"""Dataset specs: how one RLDS dataset becomes training frames (primary camera, instruction, 7-d action).

A spec is a YAML mapping `dataset_name -> fields` (docs/DATASETS.md has the field list and examples). The built-in
specs live in `vla/datasets/*.yaml`; a user's file or folder of files (`data.spec_file`) adds datasets or replaces
built-ins without touching `vla/`. A dataset with no spec anywhere is read in the modified_libero_rlds layout with
`DataConfig.image_key` / `language_key` / `standardize` (how this project read every dataset before specs).

`check_spec` compares a spec with the dataset's `features.json` (plain JSON: no TensorFlow, no data read) and raises
ONE error naming the dataset, the key and the spec file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from vla.data_config import DataConfig
from vla.dataset_transforms import GRIPPER_FNS, episode_transform

ACTION_DIM = 7  # OpenVLA's EEF_POS action: xyz delta, rpy delta, gripper
EEF_POS_MASK = (True,) * 6 + (False,)  # the gripper stays absolute ({0, 1}); the 6 deltas are normalized
ACTION_ENCODINGS = ("EEF_POS",)  # the only layout OpenVLA's 7-d action head trains on
BUILTIN_DIR = Path(__file__).with_name("datasets")
_PART = re.compile(r"^(?P<key>[\w/]+)(\[(?P<start>-?\d*)(?P<colon>:?)(?P<stop>-?\d*)\])?$")


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one dataset. Keys are paths under `steps/` in the tfds features ("/" between levels)."""

    name: str
    image_key: str = "image"  # steps/observation/<image_key>: the primary camera, the one image the model sees
    language_key: str = "language_instruction"  # steps/<language_key>: the instruction text
    action: tuple[str, ...] = ("action",)  # parts concatenated into the 7-d action: "key", "key[i]" or "key[a:b]"
    gripper: str = "absolute"  # the last dim's convention -> 1 = open, 0 = close (one of GRIPPER_FNS)
    normalize_mask: tuple[bool, ...] = EEF_POS_MASK  # dims normalized with q01 / q99; the others pass through
    skip_first_steps: int = 0  # steps dropped at the start of every episode
    transform: str | None = None  # optional episode transform (dataset_transforms.EPISODE_TRANSFORMS or "mod:fn")
    state_key: str | None = None  # steps/<state_key>: the proprio state, for transforms that read it
    wrist_image_key: str | None = None  # documentation only: OpenVLA loads the primary camera alone
    action_encoding: str = "EEF_POS"
    source: str = "built-in"  # the file the spec came from (named in errors)

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r} (spec: {self.source})"
        if self.gripper not in GRIPPER_FNS:
            raise ValueError(f"{where}: gripper {self.gripper!r} is not one of {sorted(GRIPPER_FNS)}")
        if self.action_encoding not in ACTION_ENCODINGS:
            raise ValueError(f"{where}: action_encoding {self.action_encoding!r} is not one of {ACTION_ENCODINGS}")
        if len(self.normalize_mask) != ACTION_DIM:
            raise ValueError(f"{where}: normalize_mask has {len(self.normalize_mask)} entries, expected {ACTION_DIM}")
        if not self.action or self.skip_first_steps < 0:
            raise ValueError(f"{where}: action needs at least one part and skip_first_steps must be >= 0")
        for part in self.action:
            if not _PART.match(part):
                raise ValueError(f"{where}: action part {part!r} is not 'key', 'key[i]' or 'key[a:b]'")
        if self.transform is not None:
            try:
                episode_transform(self.transform)
            except KeyError as err:
                raise ValueError(f"{where}: {err.args[0]}") from None

    @property
    def needs_state(self) -> bool:
        return self.transform is not None and episode_transform(self.transform)[1]

    def action_parts(self) -> list[tuple[str, slice]]:
        """[(key, slice of its last axis)] in concatenation order."""
        out = []
        for part in self.action:
            m = _PART.match(part)
            start, stop = m["start"], m["stop"]
            if m["start"] is None:  # no brackets
                index = slice(None)
            elif not m["colon"]:  # key[i]
                index = slice(int(start), int(start) + 1 or None)
            else:
                index = slice(int(start) if start else None, int(stop) if stop else None)
            out.append((m["key"], index))
        return out

    def fingerprint(self) -> str:
        """Everything that changes the actions (the statistics cache key hashes it)."""
        fields = dataclasses.asdict(self)
        return json.dumps({k: v for k, v in fields.items() if k not in ("source", "wrist_image_key")}, sort_keys=True)


_FIELDS = {f.name for f in dataclasses.fields(DatasetSpec)} - {"name", "source"}


def parse_specs(raw: Any, source: str) -> dict[str, DatasetSpec]:
    """A YAML document `{dataset_name: {field: value}}` -> specs; unknown fields are an error naming `source`."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a spec file is a mapping 'dataset_name: {{fields}}', got {type(raw).__name__}")
    specs = {}
    for name, fields in raw.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{source}: dataset {name!r} must map to its fields, got {fields!r}")
        unknown = sorted(set(fields) - _FIELDS)
        if unknown:
            raise ValueError(f"{source}: dataset {name!r} has unknown fields {unknown}; known: {sorted(_FIELDS)}")
        values = dict(fields)
        for key in ("action", "normalize_mask"):
            if key in values:
                values[key] = tuple([values[key]] if isinstance(values[key], str) else values[key])
        specs[str(name)] = DatasetSpec(name=str(name), source=source, **values)
    return specs


def load_spec_files(path: Path | str) -> dict[str, DatasetSpec]:
    """Specs of a YAML file, or of every `*.yaml` / `*.yml` in a folder (later files win)."""
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"data.spec_file {path} does not exist; give a YAML spec file or a folder of them")
    specs: dict[str, DatasetSpec] = {}
    for file in files:
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{file} is not valid YAML: {err}") from None
        specs.update(parse_specs(raw, str(file)))
    return specs


@lru_cache(maxsize=1)
def builtin_specs() -> dict[str, DatasetSpec]:
    """The specs shipped in `vla/datasets/` (the LIBERO suites and a few Open X-Embodiment datasets)."""
    return load_spec_files(BUILTIN_DIR)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataConfig)}
_LEGACY_GRIPPER = {"libero": "invert", "identity": "absolute"}  # DataConfig.standardize -> gripper convention


def dataset_spec(cfg: DataConfig, name: str | None = None) -> DatasetSpec:
    """The spec of dataset `name` (default `cfg.dataset_name`): from `cfg.spec_file`, else built-in, else the
    modified_libero_rlds layout with `cfg.image_key` / `language_key` / `standardize`. Those three fields may not
    contradict a spec (set the camera in the spec instead)."""
    name = name or cfg.dataset_name
    user = load_spec_files(cfg.spec_file) if cfg.spec_file is not None else {}
    spec = user.get(name) or builtin_specs().get(name)
    if spec is None:
        return DatasetSpec(name=name, image_key=cfg.image_key, language_key=cfg.language_key,
                           gripper=_LEGACY_GRIPPER[cfg.standardize],
                           source="no spec: the modified_libero_rlds layout from data.image_key / language_key / "
                                  "standardize")  # fmt: skip
    for field, mine in (("image_key", spec.image_key), ("language_key", spec.language_key)):
        asked = getattr(cfg, field)
        if asked != _DEFAULTS[field] and asked != mine:
            raise ValueError(f"dataset {name!r} has a spec ({spec.source}) with {field}={mine!r} but data.{field} is "
                             f"{asked!r}; change the spec (or copy it into your own data.spec_file) instead")  # fmt: skip
    if cfg.standardize != _DEFAULTS["standardize"]:
        raise ValueError(f"dataset {name!r} has a spec ({spec.source}) with gripper={spec.gripper!r}; "
                         "data.standardize applies only to datasets without a spec")  # fmt: skip
    return spec


# ---- features.json: the dataset's schema, read without TensorFlow ----


@dataclass(frozen=True)
class Feature:
    kind: str  # "image", "tensor", "text" or "other"
    shape: tuple[int, ...]
    dtype: str


def _walk(node: dict, prefix: str, out: dict[str, Feature]) -> None:
    if "featuresDict" in node:
        for key, child in node["featuresDict"]["features"].items():
            _walk(child, f"{prefix}{key}/", out)
        return
    path = prefix.rstrip("/")
    if "image" in node:
        info = node["image"]
        out[path] = Feature("image", tuple(int(d) for d in info["shape"]["dimensions"]), info.get("dtype", "uint8"))
    elif "tensor" in node:
        info = node["tensor"]
        dims = tuple(int(d) for d in info.get("shape", {}).get("dimensions", []))
        out[path] = Feature("tensor", dims, info.get("dtype", ""))
    elif "text" in node:
        out[path] = Feature("text", (), "string")
    else:
        out[path] = Feature("other", (), node.get("pythonClassName", "?"))


def step_features(dataset_dir: Path) -> dict[str, Feature]:
    """`{path under steps/: Feature}` from `<dataset_dir>/features.json`."""
    path = Path(dataset_dir) / "features.json"
    try:
        steps = json.loads(path.read_text())["featuresDict"]["features"]["steps"]["sequence"]["feature"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not an RLDS features file ({type(err).__name__}: {err})") from None
    out: dict[str, Feature] = {}
    _walk(steps, "", out)
    return out


def check_spec(spec: DatasetSpec, dataset_dir: Path) -> dict[str, Feature]:
    """Raise ONE ValueError naming the dataset, the key and the spec file if the dataset lacks a key the spec reads
    or has the wrong kind / shape there; returns the features."""
    features = step_features(dataset_dir)
    where = f"dataset {spec.name!r} ({dataset_dir}, spec: {spec.source})"

    def need(key: str, kind: str, what: str) -> Feature:
        feature = features.get(key)
        if feature is None or feature.kind != kind:
            found = sorted(k for k, f in features.items() if f.kind == kind)
            got = "no such key" if feature is None else f"a {feature.kind} feature"
            raise ValueError(f"{where}: {what} steps/{key} is {got}; {kind} features there: {found}")
        return feature

    image = need(f"observation/{spec.image_key}", "image", "image_key")
    if len(image.shape) != 3 or image.shape[-1] != 3:
        raise ValueError(f"{where}: image_key steps/observation/{spec.image_key} has shape {image.shape}, "
                         "expected (H, W, 3) RGB")  # fmt: skip
    need(spec.language_key, "text", "language_key")
    width = 0
    for key, index in spec.action_parts():
        feature = need(key, "tensor", "action part")
        if len(feature.shape) > 1 or not feature.dtype.startswith("float"):
            raise ValueError(f"{where}: action part steps/{key} is {feature.dtype}{list(feature.shape)}, expected a "
                             "float scalar or vector")  # fmt: skip
        size = feature.shape[0] if feature.shape else 1
        taken = len(range(size)[index])
        if taken == 0 or (index.start is not None and not -size <= index.start < size):
            raise ValueError(f"{where}: action part {key}[{index.start}:{index.stop}] is outside its {size} dims")
        width += taken
    if width != ACTION_DIM:
        raise ValueError(f"{where}: the action parts {list(spec.action)} give {width} dims, expected {ACTION_DIM} "
                         "(xyz delta, rpy delta, gripper)")  # fmt: skip
    if spec.needs_state:
        if spec.state_key is None:
            raise ValueError(f"{where}: transform {spec.transform!r} reads the state; set state_key")
        state = need(spec.state_key, "tensor", "state_key")
        if len(state.shape) != 1 or state.shape[0] < 6:
            raise ValueError(f"{where}: state_key steps/{spec.state_key} has shape {state.shape}, expected (>= 6,)")
    return features

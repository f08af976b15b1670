"""A training run's directory (`RunConfig`: where it is and what a save writes): the resolved config,
`metrics.jsonl`, the trainer state for resume, and the learning-curve plot. Every file is written through a temp file
+ rename, so a crash never leaves half a file; a checkpoint's files are published together (vla.checkpoint_publish).
Run ids are single folder names: no separators, no `..`, never absolute, so a run never lands outside its root."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.checkpoint_publish import CHECKPOINT_FILE as CHECKPOINT_FILE  # {"step": N}; also in adapter/, merged/
from vla.files import append_jsonl, atomic_write, atomic_write_text, read_jsonl
from vla.trainer_state import STRUCTURE_FILE, TENSORS_FILE, has_trainer_state, load_trainer_state

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
STATE_FILES = (TENSORS_FILE, STRUCTURE_FILE)  # the trainer state (vla.trainer_state)
STATISTICS_FILE = "dataset_statistics.json"
CURVE_FILE = "learning_curve.png"
EVALS_FILE = "eval_results.jsonl"  # one line per LIBERO evaluation of this run's merged checkpoint (scripts/eval.py)
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


@dataclass
class RunConfig:
    """Fine-tuning section `run`: where the run is written, what each save writes, and the device."""

    root_dir: Path = Path("runs")  # runs are written to root_dir/<id>
    id: str | None = None  # null = "<model>+<dataset>+b<batch x accumulation>+lr-<lr>..." (the official pattern)
    id_note: str | None = None  # appended to the default id as "--<note>"
    resume: bool = False  # continue root_dir/<id> from its trainer_state.pt (else the dir must not exist yet)
    save_merged: bool = True  # also write the merged model (official checkpoint format) at every save
    save_latest_only: bool = True  # merged model replaced at each save; false = keep each as merged--<step>_chkpt
    adapter_dir: Path | None = None  # null = <run dir>/adapter; else the adapter goes to adapter_dir/<id>
    device: str = "auto"  # "auto" = cuda:LOCAL_RANK when CUDA is available, else "cpu"

    def check(self) -> None:
        for name in ("id", "id_note"):
            if getattr(self, name) is not None:
                check_name(getattr(self, name), f"run.{name}")

    def adapter_path(self, run_dir: Path) -> Path:
        return run_dir / ADAPTER_DIR if self.adapter_dir is None else Path(self.adapter_dir) / run_dir.name

    def merged_path(self, run_dir: Path, step: int) -> Path:
        return run_dir / (MERGED_DIR if self.save_latest_only else f"{MERGED_DIR}--{step}_chkpt")


def check_name(name: str, what: str) -> None:
    """`name` must be one plain folder name: a run id or note with `/`, `..` or an absolute path would write outside
    the run root, or into another run."""
    separators = {"/", "\\", "\0", os.sep} | ({os.altsep} if os.altsep else set())
    if not name.strip() or name in (".", "..") or name.startswith("~") or any(c in name for c in separators):
        raise ValueError(
            f"{what} {name!r} is not a plain folder name (no '/', '\\', '..', '~' or absolute path); choose a name like "
            "'libero_spatial-lora' (the run is written to run.root_dir/<id>)"
        )


def _plain(value: Any) -> Any:
    """Dataclasses, Paths and Enums -> YAML-safe builtins."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    return _plain(config)


def config_to_yaml(config: Any) -> str:
    import yaml

    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


class RunDir:
    """The files of one run under `path` (see the module constants for their names)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def has_state(self) -> bool:
        return has_trainer_state(self.path)

    def check_available(self, resume: bool) -> None:
        """Refuse to reuse an existing run directory unless resuming (cheap; call before loading weights)."""
        if self.path.exists() and not resume and (not self.path.is_dir() or any(self.path.iterdir())):
            raise FileExistsError(
                f"run directory {self.path} already exists; pass --resume to continue that run, "
                "or choose another --run_id / --run_root_dir"
            )

    def claim(self, resume: bool) -> None:
        """Create the run directory for a new run, atomically: if another process created it since
        `check_available`, fail instead of writing into it (resuming continues an existing one)."""
        if resume and self.path.is_dir():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.mkdir()
        except FileExistsError:
            self.check_available(resume=False)  # an empty folder is fine; anything in it is another run

    def write_config(self, config: Any) -> None:
        atomic_write_text(self.file(CONFIG_FILE), config_to_yaml(config))

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.file(name), json.dumps(obj, indent=2))

    def load_state(self) -> dict[str, Any]:
        """The trainer state of the last complete checkpoint (safetensors + JSON: reading it runs no code)."""
        return load_trainer_state(self.path)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The logged records; a torn last line (a kill mid-append) is dropped with a warning."""
        return read_jsonl(self.file(METRICS_FILE), "delete that line (the records after it are lost anyway)")

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON line per logged optimizer step; appended and flushed (a crash loses at most that line)."""
        append_jsonl(self.file(METRICS_FILE), record)

    def truncate_metrics(self, last_step: int) -> None:
        """On resume: drop lines logged after the checkpoint (a killed run may have logged steps it never saved)."""
        kept = [r for r in self.read_metrics() if r["step"] <= last_step]
        atomic_write_text(self.file(METRICS_FILE), "".join(json.dumps(r) + "\n" for r in kept))

    def read_evals(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file(EVALS_FILE), "delete that line, then re-run that evaluation")

    def append_eval(self, record: dict[str, Any]) -> None:
        """Record one evaluation (`step`, `task_suite`, `success_rate`, `ci95`, `trials`, `eval_dir`), replacing an
        earlier record of the same `eval_dir` (a resumed evaluation), and redraw the learning curve."""
        kept = [r for r in self.read_evals() if r.get("eval_dir") != record.get("eval_dir")]
        atomic_write_text(self.file(EVALS_FILE), "".join(json.dumps(r) + "\n" for r in [*kept, record]))
        self.plot_learning_curve()

    def best_step(self, by: str) -> int | None:
        """The step whose checkpoint the run's own measurements rank first (early stopping), or None without them:
        by "success" the highest LIBERO success rate among its sample evaluations (eval_results.jsonl's records of
        the fewest trials, so a full-protocol evaluation never ranks its own pick), ties to the later step; by
        "val_loss" the lowest held-out loss (metrics.jsonl, `logging.val_batches`). The held-out loss rose after ~7
        epochs while the success rate still climbed (docs/RESULTS.md, thirteenth session): it picks too early."""
        if by == "success":
            evals = self.read_evals()
            fewest = min((e["trials"] for e in evals), default=None)
            ranked = [(e["success_rate"], e["step"]) for e in evals if e["trials"] == fewest]
            return max(ranked)[1] if ranked else None
        if by == "val_loss":
            held_out = [r for r in self.read_metrics() if "val_loss" in r]
            return min(held_out, key=lambda r: r["val_loss"])["step"] if held_out else None
        raise ValueError(f"unknown criterion {by!r}: choose 'success' or 'val_loss'")

    def plot_learning_curve(self) -> Path | None:
        """`learning_curve.png`: training loss and action-token accuracy vs optimizer step (from metrics.jsonl; their
        held-out values at the checkpoints when logged), and LIBERO success rate vs step (95 % Wilson interval) when
        eval_results.jsonl holds evaluations."""
        records, evals = self.read_metrics(), self.read_evals()
        if not records:
            return None
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:  # e.g. a bare GPU machine: the metrics are in metrics.jsonl anyway
            logger.warning("matplotlib is not installed: no %s", CURVE_FILE)
            return None

        steps = [r["step"] for r in records]
        fig = Figure(figsize=(13.5 if evals else 9, 3.5), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3 if evals else 2)
        for ax, key, label in zip(
            axes,
            ("loss", "action_accuracy"),
            ("loss (cross-entropy)", "action-token accuracy"),
            strict=False,
        ):
            ax.plot(steps, [r[key] for r in records], alpha=0.35, label="per step")
            ax.plot(steps, [r[f"{key}_smoothed"] for r in records], label="smoothed")
            held_out = [(r["step"], r[f"val_{key}"]) for r in records if f"val_{key}" in r]
            if held_out:  # logging.val_batches: the val split at each checkpoint (vla.validation)
                ax.plot(*zip(*held_out, strict=True), marker="o", label="held-out (val split)")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend()
        if evals:
            ax = axes[2]
            for suite in sorted({e["task_suite"] for e in evals}):
                points = sorted((e["step"], e["success_rate"], *e["ci95"]) for e in evals if e["task_suite"] == suite)
                x, y, low, high = (np.array(v, dtype=float) for v in zip(*points, strict=True))
                ax.errorbar(
                    x, y, yerr=np.clip([y - low, high - y], 0, None), marker="o", capsize=3, label=suite
                )  # rounding can put y a hair outside its interval
            ax.set_xlim(0, max(steps[-1], max(e["step"] for e in evals)) * 1.05)
            ax.set_ylim(0, 1)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("LIBERO success rate")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(self.path.name, fontsize=9)
        fig.tight_layout()
        path = self.file(CURVE_FILE)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
        return path


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states: saved per rank in the trainer state."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

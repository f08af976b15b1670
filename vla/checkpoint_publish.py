"""Publishing a checkpoint's files together. A save writes every artifact (adapter, merged model, trainer state,
statistics, checkpoint.json) into a staging folder `.save-<step>.tmp` inside the run directory; one rename to
`.save-<step>.ready` commits it; then each artifact is moved onto its place. A process killed before the commit
leaves the previous checkpoint untouched (the staging folder is deleted at the next start); killed after it, the
next start (or resume) finishes the moves. So a resume always sees the files of one step, never a mix."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

from vla.files import atomic_write_text, read_json, replace_directory

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.json"  # {"step": N}: in the run dir and in every folder a save publishes
MANIFEST = "publish.json"  # {"step": N, "targets": {name in the staging folder: destination path}}, in order


def staging_folder(run_dir: Path, step: int) -> Path:
    """A fresh, empty staging folder for the save of `step` (a leftover of an interrupted save is removed)."""
    stage = Path(run_dir) / f".save-{step}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def commit(stage: Path, step: int, targets: dict[str, Path]) -> None:
    """Commit the staging folder (atomic rename) and publish it: `targets` maps each name in it to its destination,
    moved in order (put the file readers look for first last, e.g. checkpoint.json)."""
    missing = [name for name in targets if not (stage / name).exists()]
    if missing:
        raise FileNotFoundError(f"staging folder {stage} lacks {missing}: the save did not write them")
    unmarked = [name for name in targets if (stage / name).is_dir() and _step_of(stage / name) != step]
    if unmarked:  # recovery tells a swapped-in folder from the old one by this record
        raise ValueError(f"folders {unmarked} in {stage} lack {CHECKPOINT_FILE} with step {step}")
    atomic_write_text(
        stage / MANIFEST, json.dumps({"step": step, "targets": {k: str(v) for k, v in targets.items()}}, indent=2)
    )
    ready = stage.with_name(f".save-{step}.ready")
    shutil.rmtree(ready, ignore_errors=True)
    os.replace(stage, ready)  # the commit point
    _publish(ready)


def finish_interrupted(run_dir: Path) -> int | None:
    """Clean up after a process killed during a save: drop uncommitted staging folders, finish publishing committed
    ones, delete directories left half-swapped. Returns the step it finished publishing, if any."""
    run_dir, finished = Path(run_dir), None
    if not run_dir.is_dir():
        return None
    for stage in run_dir.glob(".save-*.tmp"):
        logger.warning("removing %s: a save interrupted before it was complete", stage)
        shutil.rmtree(stage, ignore_errors=True)
    for ready in sorted(run_dir.glob(".save-*.ready"), key=lambda p: int(p.name.split("-")[1].split(".")[0])):
        finished = _publish(ready)
        logger.warning("finished publishing the interrupted save of step %d", finished)
    for old in run_dir.glob(".*.old-*"):  # replace_directory swapped it out, then was killed before deleting it
        shutil.rmtree(old, ignore_errors=True)
    return finished


def _publish(ready: Path) -> int:
    manifest = read_json(ready / MANIFEST, "delete this interrupted save folder; the previous checkpoint is intact")
    for name, target in manifest["targets"].items():
        source, target = ready / name, Path(target)
        if not source.exists():  # moved before the interruption
            continue
        if source.is_dir() and _step_of(target) == manifest["step"]:  # swapped in; `source` holds the old copy
            shutil.rmtree(source)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        _move(source, target)
    shutil.rmtree(ready)
    return int(manifest["step"])


def _step_of(directory: Path) -> int | None:
    """The step a published folder records in its own checkpoint.json (every folder a save publishes has one)."""
    try:
        return int(json.loads((directory / CHECKPOINT_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _move(source: Path, target: Path) -> None:
    """Rename `source` onto `target` (a directory swaps in whole); across file systems (an adapter_dir elsewhere),
    copy next to the target first, then rename."""
    try:
        if source.is_dir():
            replace_directory(source, target)
        else:
            os.replace(source, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        near = target.with_name(f".{target.name}.incoming")
        shutil.rmtree(near, ignore_errors=True)
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, near)
        _move(near, target)
        shutil.rmtree(source) if source.is_dir() else source.unlink()

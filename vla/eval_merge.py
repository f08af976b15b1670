"""One evaluation from several: the folders of `scripts/eval.py` runs that split one protocol between them (tasks on
different nodes, calls or cluster jobs, e.g. `--tasks "[4,3]"` and `--tasks "[0,1,2,5,6,7,8,9]"`) become one folder
that reads as if a single run had made it: its `eval_config.json` selects the union of their tasks (all of them:
`tasks` null), its `episodes.jsonl` holds every input's records, its `summary.json` the combined table. The merged
folder is an ordinary evaluation folder: `--report_only` prints it, and `--resume true` runs what none of the
inputs ran; episode videos stay where they are (each record's path leads there). Inputs must agree on every setting
that makes episodes comparable (`MERGE_KEYS`: `vla.evaluation.RESUME_KEYS`, the trials per task, the env seed and the
reset kind), and no episode may be in two of them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vla.evaluation import CONFIG_FILE, EPISODES_FILE, RESUME_KEYS, SUMMARY_FILE, report
from vla.files import atomic_write_text
from vla.libero_env import list_tasks
from vla.reporting import read_episodes

MERGE_KEYS = (*RESUME_KEYS, "num_trials_per_task", "env_seed", "hard_reset")  # must agree across inputs


def merge_evaluations(inputs: list[str | Path], out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write the evaluation of `inputs` taken together to `out_dir`; returns its summary (`vla.evaluation.report`).
    Everything is checked before anything is written."""
    if len(inputs) < 2:
        raise ValueError(f"merging needs at least two evaluation folders, got {len(inputs)}")
    out = Path(out_dir)
    if any(Path(p).resolve() == out.resolve() for p in inputs):
        raise ValueError(f"--out {out} is one of the inputs: write the merged evaluation to a new folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: choose a new folder or pass --overwrite")
    configs, records = [], []
    for path in map(Path, inputs):
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path / CONFIG_FILE} not found: each input must be an eval.py --out_dir folder")
        configs.append(json.loads((path / CONFIG_FILE).read_text()))
        records.append(read_episodes(path / EPISODES_FILE) if (path / EPISODES_FILE).exists() else [])
    first = configs[0]
    for path, config in zip(inputs[1:], configs[1:], strict=True):
        differ = {k: (first.get(k), config.get(k)) for k in MERGE_KEYS if first.get(k) != config.get(k)}
        if differ:
            raise ValueError(f"{path} was not evaluated like {inputs[0]}: {differ} (first, this); only evaluations "
                             "of the same policy with the same settings make one protocol")  # fmt: skip
    owner: dict[tuple[int, int], str] = {}
    for path, mine in zip(inputs, records, strict=True):
        for key in {(r["task_id"], r["episode"]) for r in mine}:
            if key in owner:
                raise ValueError(f"task {key[0]} episode {key[1]} is in both {owner[key]} and {path}: merge evaluations "
                                 "of different episodes (e.g. different --tasks)")  # fmt: skip
            owner[key] = str(path)
    suite_ids = [t.task_id for t in list_tasks(first["task_suite"])]
    chosen = {i for config in configs for i in (config["tasks"] if config["tasks"] is not None else suite_ids)}
    merged = {**first, "tasks": None if chosen == set(suite_ids) else sorted(chosen), "out_dir": str(out),
              "resume": False, "merged_from": [str(p) for p in inputs]}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for path, mine in zip(inputs, records, strict=True):
        for r in mine:  # a video's path is relative to its evaluation folder: make it the merged folder's
            if r.get("video"):
                r["video"] = os.path.relpath(Path(path) / r["video"], out)
    atomic_write_text(out / EPISODES_FILE, "".join(json.dumps(r) + "\n" for mine in records for r in mine))
    atomic_write_text(out / CONFIG_FILE, json.dumps(merged, indent=2) + "\n")
    summary = report(out) | {"merged_from": merged["merged_from"]}
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary

"""Evaluation results apart from running them: Wilson intervals, success rates (errors kept apart), the summary and
its table, the W&B keys, and the hook that puts an evaluation on its training run's learning curve."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from vla.libero_env import TaskInfo

log = logging.getLogger(__name__)

STATUSES = ("success", "failure", "error")
Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion (sound at 0 % and 100 %, unlike the normal one); None at n=0."""
    if trials == 0:
        return None
    p = successes / trials
    denom = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def read_episodes(path: Path) -> list[dict[str, Any]]:
    """The records of an `episodes.jsonl`: a torn last line from a crash is dropped with a warning; any other bad
    line is an error naming the file and the line."""
    from vla.files import read_jsonl

    return read_jsonl(path, "delete that line: its episode is run again on --resume")


def rates(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Success among episodes that reached a verdict; errors are counted apart, never as failures."""
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    trials = counts["success"] + counts["failure"]
    return {
        "successes": counts["success"],
        "failures": counts["failure"],
        "errors": counts["error"],
        "trials": trials,
        "success_rate": counts["success"] / trials if trials else None,
        "ci95": wilson_interval(counts["success"], trials),
    }


def summarize(
    records: list[dict[str, Any]], tasks: list[TaskInfo], *, task_suite: str, policy: str, checkpoint: str | None,
    num_trials_per_task: int, max_steps: int,
) -> dict[str, Any]:  # fmt: skip
    """Per-task and overall rates over the configured episodes (the latest record of each episode counts)."""
    wanted = {t.task_id for t in tasks}
    latest = {
        (r["task_id"], r["episode"]): r
        for r in records
        if r["task_id"] in wanted and r["episode"] < num_trials_per_task
    }
    per_task = []
    for task in tasks:
        mine = [r for (task_id, _), r in latest.items() if task_id == task.task_id]
        per_task.append({"task_id": task.task_id, "task": task.language, **rates(mine)})
    expected = len(tasks) * num_trials_per_task
    return {
        "task_suite": task_suite,
        "policy": policy,
        "checkpoint": checkpoint,
        "num_trials_per_task": num_trials_per_task,
        "max_steps": max_steps,
        "episodes_expected": expected,
        "episodes_recorded": len(latest),
        "complete": len(latest) == expected,
        "env_steps": sum(r["steps"] for r in latest.values()),
        "episode_wall_time_s": sum(r["wall_time_s"] for r in latest.values()),
        "overall": rates(list(latest.values())),
        "tasks": per_task,
    }


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a fixed-width table: per task and overall success, 95 % CI and errors."""

    def row(label: str, rates: dict[str, Any], text: str) -> str:
        rate = "   n/a" if rates["success_rate"] is None else f"{100 * rates['success_rate']:5.1f}%"
        ci = "" if rates["ci95"] is None else f"[{100 * rates['ci95'][0]:5.1f}, {100 * rates['ci95'][1]:5.1f}]"
        return (
            f"{label:>7}  {rates['successes']:>4}/{rates['trials']:<4}  {rate}  {ci:<14}  {rates['errors']:>6}  {text}"
        )

    lines = [f"{summary['task_suite']} — policy {summary['policy']}, {summary['max_steps']} max steps"]
    lines.append(f"{'task':>7}  {'success':^9}  {'rate':>6}  {'95% CI':<14}  {'errors':>6}  instruction")
    lines += [row(str(t["task_id"]), t, t["task"][:70]) for t in summary["tasks"]]
    lines.append(
        row(
            "overall",
            summary["overall"],
            f"{summary['episodes_recorded']}/{summary['episodes_expected']} "
            "episodes recorded; errors are excluded from the rate",
        )
    )
    return "\n".join(lines)


def log_wandb(run, summary: dict[str, Any]) -> None:
    """OpenVLA's W&B keys: success_rate/<task>, num_episodes/<task>, success_rate/total (errors logged apart)."""
    metrics = {"success_rate/total": summary["overall"]["success_rate"], "errors/total": summary["overall"]["errors"]}
    for task in summary["tasks"]:
        metrics[f"success_rate/{task['task']}"] = task["success_rate"]
        metrics[f"num_episodes/{task['task']}"] = task["trials"]
    run.log({k: v for k, v in metrics.items() if v is not None})


def record_in_training_run(checkpoint: str | Path | None, summary: dict[str, Any]) -> Path | None:
    """When `checkpoint` is a training run's merged folder, add this evaluation to the run's eval_results.jsonl at
    the step of the weights evaluated (`summary["checkpoint_step"]`, read when they were loaded; else the folder's
    own checkpoint.json) and redraw its learning_curve.png; returns the run dir, else None."""
    from vla.run_dir import CHECKPOINT_FILE, MERGED_DIR, RunDir

    if checkpoint is None or not Path(checkpoint).name.startswith(MERGED_DIR):
        return None
    step = summary.get("checkpoint_step")
    if step is None and (Path(checkpoint) / CHECKPOINT_FILE).is_file():
        step = json.loads((Path(checkpoint) / CHECKPOINT_FILE).read_text())["step"]
    if step is None:  # not saved by a training run of this version: the run's step may not be these weights'
        log.warning("%s records no training step: not added to its run's learning curve", checkpoint)
        return None
    run = RunDir(Path(checkpoint).parent)
    overall = summary["overall"]
    run.append_eval({
        "step": step, "task_suite": summary["task_suite"],
        "success_rate": overall["success_rate"], "ci95": overall["ci95"], "trials": overall["trials"],
        "eval_dir": str(summary["run_dir"]),
    })  # fmt: skip
    return run.path

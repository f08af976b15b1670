"""LIBERO evaluation with OpenVLA's protocol (reference §10) on parallel env workers: fixed initial states, settle
steps, the suite's step limit, success = LIBERO's `done`; per-episode JSONL (resumable), summary with Wilson CIs.
Simulation runs only in `EnvPool`'s spawned workers, so this process may hold TensorFlow (for `libero_image`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from vla.libero_env import (
    SUITE_MAX_STEPS,
    EnvPool,
    ResetRequest,
    TaskInfo,
    check_suite,
    list_tasks,
    load_init_states,
    setup_libero,
)
from vla.normalization import write_json_atomic
from vla.policies import Observation, Policy

log = logging.getLogger(__name__)

POLICY_KINDS = ("vla", "expert", "random")
QUANTIZATIONS = (None, "8bit", "4bit")
WANDB_MODES = ("offline", "online", "disabled")
STATUSES = ("success", "failure", "error")
EPISODES_FILE, SUMMARY_FILE, CONFIG_FILE = "episodes.jsonl", "summary.json", "eval_config.json"
VIDEO_FPS = 30  # OpenVLA's replay videos
Z95 = 1.959963984540054  # two-sided 95 % normal quantile
# Settings whose change makes old episodes incomparable: `resume` refuses to mix runs that differ in them.
RESUME_KEYS = ("task_suite", "policy", "checkpoint", "unnorm_key", "center_crop", "quantization", "max_steps", "seed")


@dataclass
class EvalConfig:
    """One LIBERO evaluation run. Defaults follow OpenVLA's `GenerateConfig` (reference §10)."""

    task_suite: str = "libero_spatial"  # libero_spatial | libero_object | libero_goal | libero_10 | libero_90
    policy: str = "vla"  # vla (a checkpoint) | expert (scripted, privileged state) | random
    checkpoint: str | None = None  # VLA checkpoint directory (ours or official format); required for policy=vla
    unnorm_key: str | None = None  # statistics to un-normalize actions; None: `<suite>` or `<suite>_no_noops`
    center_crop: bool = True  # center crop (area 0.9) before the model: True for models trained with image aug
    quantization: str | None = None  # None (bf16) | 8bit | 4bit (bitsandbytes)
    device: str | None = None  # torch device of the VLA; None: cuda if available, else cpu
    dtype: str | None = None  # VLA weight dtype (torch dtype name); None: bfloat16 on CUDA, float32 on CPU (faster)
    num_trials_per_task: int = 50  # episodes per task, on the benchmark's fixed initial states 0..n-1 (≤ 50)
    tasks: list[int] | None = None  # task ids to evaluate (default: the whole suite)
    max_steps: int | None = None  # policy steps per episode; None: the suite's limit (SUITE_MAX_STEPS)
    num_envs: int = 1  # parallel simulation worker processes (one env each)
    seed: int = 7  # seeds random / numpy / torch in this process (OpenVLA's protocol seed)
    env_seed: int = 0  # `env.seed()` before every reset (OpenVLA seeds each env once with 0)
    out_dir: str | None = None  # results folder; None: runs/eval/<suite>-<policy>-<date-time>
    resume: bool = False  # continue the run in out_dir, skipping episodes already in its episodes.jsonl
    retry_errors: bool = False  # with resume: run again the episodes recorded as `error`
    save_videos: bool = False  # one mp4 per episode under out_dir/videos (30 fps)
    libero_assets: str | None = None  # LIBERO assets folder; None: $VLA_LIBERO_ASSETS, else LIBERO's own
    wandb: bool = False  # log to Weights & Biases
    wandb_project: str = "vla-libero-eval"  # W&B project
    wandb_entity: str | None = None  # W&B entity (user or team)
    wandb_mode: str = "offline"  # offline | online | disabled

    def validate(self) -> None:
        """Cheap checks of every field (and that LIBERO imports and finds its assets), before anything loads."""
        check_suite(self.task_suite)
        if self.policy not in POLICY_KINDS:
            raise ValueError(f"unknown policy {self.policy!r}: choose one of {POLICY_KINDS}")
        if self.policy == "vla":
            if not self.checkpoint:
                raise ValueError("policy=vla needs --checkpoint DIR (a checkpoint directory)")
            if not Path(self.checkpoint).exists():
                raise FileNotFoundError(f"checkpoint {self.checkpoint} does not exist: pass an existing directory")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {self.quantization!r}: choose one of {QUANTIZATIONS}")
        for name in ("num_trials_per_task", "num_envs", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"unknown wandb_mode {self.wandb_mode!r}: choose one of {WANDB_MODES}")
        if self.resume and self.out_dir is None:
            raise ValueError("resume needs --out_dir: the folder of the run to continue")
        if self.retry_errors and not self.resume:
            raise ValueError("retry_errors only applies with resume: pass --resume true")
        if self.out_dir is not None and (Path(self.out_dir) / EPISODES_FILE).exists() and not self.resume:
            raise FileExistsError(
                f"{self.out_dir} already holds an evaluation: pass --resume true or another --out_dir"
            )
        setup_libero(self.libero_assets)  # raises LiberoSetupError naming the fix
        num_tasks = len(list_tasks(self.task_suite))
        bad = [t for t in self.tasks or [] if not 0 <= t < num_tasks]
        if bad:
            raise ValueError(f"task ids {bad} out of range: {self.task_suite} has tasks 0..{num_tasks - 1}")

    @property
    def episode_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else SUITE_MAX_STEPS[self.task_suite]

    def run_dir(self) -> Path:
        if self.out_dir is not None:
            return Path(self.out_dir)
        return Path("runs/eval") / f"{self.task_suite}-{self.policy}-{datetime.now():%Y%m%d-%H%M%S}"


def seed_everything(seed: int) -> None:
    """OpenVLA's `set_seed_everywhere`: Python, numpy, torch (all devices), deterministic cuDNN, and the hash seed
    that spawned env workers inherit."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    os.environ["PYTHONHASHSEED"] = str(seed)


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
    """The records of an `episodes.jsonl` (a torn last line from a crash is skipped with a warning)."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping unreadable line %d of %s (a crash mid-write?)", number, path)
    return records


def _rates(records: list[dict[str, Any]]) -> dict[str, Any]:
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


def summarize(records: list[dict[str, Any]], tasks: list[TaskInfo], cfg: EvalConfig) -> dict[str, Any]:
    """Per-task and overall rates over the configured episodes (the latest record of each episode counts)."""
    wanted = {t.task_id for t in tasks}
    latest = {
        (r["task_id"], r["episode"]): r
        for r in records
        if r["task_id"] in wanted and r["episode"] < cfg.num_trials_per_task
    }
    per_task = []
    for task in tasks:
        mine = [r for (task_id, _), r in latest.items() if task_id == task.task_id]
        per_task.append({"task_id": task.task_id, "task": task.language, **_rates(mine)})
    expected = len(tasks) * cfg.num_trials_per_task
    return {
        "task_suite": cfg.task_suite,
        "policy": cfg.policy,
        "checkpoint": cfg.checkpoint,
        "num_trials_per_task": cfg.num_trials_per_task,
        "max_steps": cfg.episode_steps,
        "episodes_expected": expected,
        "episodes_recorded": len(latest),
        "complete": len(latest) == expected,
        "env_steps": sum(r["steps"] for r in latest.values()),
        "episode_wall_time_s": sum(r["wall_time_s"] for r in latest.values()),
        "overall": _rates(list(latest.values())),
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


@dataclass
class _Episode:
    task: TaskInfo
    index: int  # also the index of its fixed initial state
    started: float
    obs: Observation = field(default_factory=dict)
    steps: int = 0
    frames: list[np.ndarray] = field(default_factory=list)


class _Recorder:
    """Turns finished episodes into JSONL records (appended and flushed at once) and optional mp4s."""

    def __init__(self, cfg: EvalConfig, run_dir: Path):
        self.cfg, self.run_dir, self.path = cfg, run_dir, run_dir / EPISODES_FILE

    def finish(self, ep: _Episode, status: str, error: str | None = None) -> dict[str, Any]:
        video = self._write_video(ep, status) if self.cfg.save_videos and ep.frames else None
        record = {
            "task_suite": self.cfg.task_suite,
            "task_id": ep.task.task_id,
            "task": ep.task.language,
            "episode": ep.index,
            "success": status == "success",
            "steps": ep.steps,
            "status": status,
            "error": error,
            "video": video,
            "wall_time_s": round(time.perf_counter() - ep.started, 3),
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if error is not None:
            log.error("task %d episode %d: error\n%s", ep.task.task_id, ep.index, error)
        return record

    def _write_video(self, ep: _Episode, status: str) -> str:
        import imageio.v2 as imageio

        path = self.run_dir / "videos" / f"task{ep.task.task_id:03d}_ep{ep.index:02d}_{status}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        imageio.mimwrite(path, ep.frames, fps=VIDEO_FPS)
        return str(path.relative_to(self.run_dir))


def _video_frame(policy: Policy, slot: int, obs: Observation) -> np.ndarray | None:
    """What the policy saw (VLA: the 224² image), else the raw agentview turned upright."""
    frame = policy.last_frames.get(slot)
    if frame is None and "agentview_image" in obs:
        frame = np.ascontiguousarray(obs["agentview_image"][::-1, ::-1])
    return frame


def run_episodes(
    pool: EnvPool,
    policy: Policy,
    pending: list[tuple[TaskInfo, int]],
    init_states: dict[int, np.ndarray],
    cfg: EvalConfig,
    recorder: _Recorder,
) -> Iterator[dict[str, Any]]:
    """The scheduler: a free worker takes the next (task, episode), is reset onto that episode's fixed initial state
    (plus the settle steps), then all running workers step together with one `policy.act` call. Yields each record.
    Env errors and policy exceptions end the affected episodes as `error` with the traceback; the run goes on."""
    queue, running = deque(pending), {}
    while queue or running:
        starting: dict[int, _Episode] = {}
        free = deque(w for w in range(pool.num_workers) if w not in running)
        while free and queue:
            task, index = queue.popleft()
            episode = _Episode(task, index, time.perf_counter())
            try:
                policy.reset(free[0], task)
            except Exception:
                yield recorder.finish(episode, "error", traceback.format_exc())
                continue
            starting[free.popleft()] = episode
        requests = {
            w: ResetRequest(ep.task.task_id, init_state=init_states[ep.task.task_id][ep.index], seed=cfg.env_seed)
            for w, ep in starting.items()
        }
        for w, result in pool.reset(requests).items() if requests else ():
            if result.error is not None:
                yield recorder.finish(starting[w], "error", result.error)
            else:
                starting[w].obs = result.obs  # `done` during the settle steps is ignored, as in the reference
                running[w] = starting[w]
        if not running:
            continue
        try:
            actions = policy.act(
                {w: ep.obs for w, ep in running.items()}, {w: ep.task.language for w, ep in running.items()}
            )
            if set(actions) != set(running):
                raise RuntimeError(f"policy answered slots {sorted(actions)}, expected {sorted(running)}")
        except Exception:
            trace = traceback.format_exc()  # one batched call: every episode in it shares the failure
            for w in list(running):
                yield recorder.finish(running.pop(w), "error", trace)
            continue
        if cfg.save_videos:
            for w, ep in running.items():
                frame = _video_frame(policy, w, ep.obs)
                if frame is not None:
                    ep.frames.append(frame)
        for w, result in pool.step(actions).items():
            ep = running[w]
            ep.steps += 1
            if result.error is not None:
                yield recorder.finish(running.pop(w), "error", result.error)
            elif result.done:
                yield recorder.finish(running.pop(w), "success")
            elif ep.steps >= cfg.episode_steps:
                yield recorder.finish(running.pop(w), "failure")
            else:
                ep.obs = result.obs


def _prepare_run_dir(cfg: EvalConfig, run_dir: Path) -> None:
    """Create the run folder and record the config; on resume, refuse a config that would mix incomparable runs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_path = run_dir / CONFIG_FILE
    current = dataclasses.asdict(cfg)
    if cfg.resume and saved_path.exists():
        saved = json.loads(saved_path.read_text())
        changed = {k: (saved.get(k), current[k]) for k in RESUME_KEYS if saved.get(k) != current[k]}
        if changed:
            raise ValueError(f"resume with settings that differ from the run in {run_dir}: {changed} (old, new)")
    write_json_atomic(saved_path, current)


def _start_wandb(cfg: EvalConfig, run_dir: Path):
    if not cfg.wandb:
        return None
    import wandb

    return wandb.init(
        project=cfg.wandb_project,
        entity=cfg.wandb_entity,
        mode=cfg.wandb_mode,
        dir=str(run_dir),
        name=run_dir.name,
        config=dataclasses.asdict(cfg),
    )


def _log_wandb(run, summary: dict[str, Any]) -> None:
    """OpenVLA's W&B keys: success_rate/<task>, num_episodes/<task>, success_rate/total (errors logged apart)."""
    metrics = {"success_rate/total": summary["overall"]["success_rate"], "errors/total": summary["overall"]["errors"]}
    for task in summary["tasks"]:
        metrics[f"success_rate/{task['task']}"] = task["success_rate"]
        metrics[f"num_episodes/{task['task']}"] = task["trials"]
    run.log({k: v for k, v in metrics.items() if v is not None})


def _plan(cfg: EvalConfig, records: list[dict[str, Any]]):
    """The selected tasks, the (task, episode) pairs still to run, and their tasks' fixed initial states."""
    all_tasks = list_tasks(cfg.task_suite)
    tasks = [all_tasks[i] for i in cfg.tasks] if cfg.tasks is not None else all_tasks
    finished = {(r["task_id"], r["episode"]) for r in records if not (cfg.retry_errors and r["status"] == "error")}
    pending = [(t, i) for t in tasks for i in range(cfg.num_trials_per_task) if (t.task_id, i) not in finished]
    init_states = {t.task_id: load_init_states(cfg.task_suite, t.task_id) for t in {t for t, _ in pending}}
    for task_id, states in init_states.items():
        if cfg.num_trials_per_task > len(states):
            raise ValueError(f"task {task_id} has {len(states)} initial states: num_trials_per_task must be <= that")
    return tasks, pending, init_states


def record_in_training_run(checkpoint: str | Path | None, summary: dict[str, Any]) -> Path | None:
    """When `checkpoint` is a training run's `merged` dir, add this evaluation to the run's eval_results.jsonl at the
    step of its last checkpoint (checkpoint.json) and redraw its learning_curve.png; returns the run dir, else None."""
    from vla.run_dir import CHECKPOINT_FILE, MERGED_DIR, RunDir

    if checkpoint is None or Path(checkpoint).name != MERGED_DIR:
        return None
    run = RunDir(Path(checkpoint).parent)
    if not run.file(CHECKPOINT_FILE).is_file():
        return None
    overall = summary["overall"]
    run.append_eval({
        "step": json.loads(run.file(CHECKPOINT_FILE).read_text())["step"], "task_suite": summary["task_suite"],
        "success_rate": overall["success_rate"], "ci95": overall["ci95"], "trials": overall["trials"],
        "eval_dir": str(summary["run_dir"]),
    })  # fmt: skip
    return run.path


def evaluate(cfg: EvalConfig, policy: Policy) -> dict[str, Any]:
    """Run (or resume) the evaluation `cfg` describes with `policy`; returns the summary also written to
    `<run_dir>/summary.json`, next to `episodes.jsonl` (one record per episode, appended as each finishes)."""
    from tqdm import tqdm

    cfg.validate()
    seed_everything(cfg.seed)
    run_dir = cfg.run_dir()
    _prepare_run_dir(cfg, run_dir)
    recorder = _Recorder(cfg, run_dir)
    records = read_episodes(recorder.path)
    tasks, pending, init_states = _plan(cfg, records)
    log.info("evaluating %s: %d episodes to run (%d already recorded) in %s", cfg, len(pending), len(records), run_dir)
    run = _start_wandb(cfg, run_dir)
    started, new, num_workers = time.perf_counter(), [], min(cfg.num_envs, len(pending))
    try:
        if pending:
            cameras = ("agentview",) if policy.needs_images or cfg.save_videos else ()  # no camera: ~7x faster steps
            with (
                EnvPool(cfg.task_suite, num_workers, assets_dir=cfg.libero_assets, cameras=cameras) as pool,
                tqdm(total=len(pending), desc=f"{cfg.task_suite} episodes", unit="ep") as bar,
            ):
                for record in run_episodes(pool, policy, pending, init_states, cfg, recorder):
                    records.append(record)
                    new.append(record)
                    counts = {s: sum(r["status"] == s for r in new) for s in STATUSES}
                    bar.update()
                    bar.set_postfix(counts)
                    if run is not None:
                        run.log({"episodes": len(new), **{f"episodes/{k}": v for k, v in counts.items()}})
        summary = summarize(records, tasks, cfg)
        wall, steps = time.perf_counter() - started, sum(r["steps"] for r in new)
        summary["run_dir"] = str(run_dir)
        summary["this_session"] = {  # this invocation's throughput: policy steps over wall time, resets included
            "episodes": len(new),
            "num_envs": num_workers,
            "policy_steps": steps,
            "wall_time_s": round(wall, 2),
            "policy_steps_per_s": round(steps / wall, 2) if new else None,
        }
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
        if summary["complete"]:
            record_in_training_run(cfg.checkpoint, summary)
        log.info("results in %s (%s)\n%s", run_dir, summary["this_session"], format_table(summary))
        if run is not None:
            _log_wandb(run, summary)
    finally:
        if run is not None:
            run.finish()
    return summary

"""Scripted-expert LIBERO demonstrations, recorded as OpenVLA's regenerated data (reference §9): 256² images rotated
180°, state, joint state, actions, no-op steps dropped, failed episodes dropped, from LIBERO's random placements."""

from __future__ import annotations

import logging
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.expert import ScriptedExpert, UnsupportedTaskError
from vla.libero_env import (
    SUITE_MAX_STEPS,
    EnvPool,
    ResetRequest,
    TaskInfo,
    check_suite,
    libero_state,
    noop_mask,
    upright,
)
from vla.normalization import write_json_atomic

log = logging.getLogger(__name__)
SUMMARY_FILE = "collect_summary.json"
FRAME_KEYS = ("image", "wrist_image", "state", "joint_state", "action")


@dataclass
class CollectConfig:
    """One demonstration run: which tasks, how many expert attempts each, where the RLDS dataset goes."""

    task_suite: str = "libero_spatial"  # libero_spatial | libero_object | libero_goal | libero_10 | libero_90
    episodes_per_task: int = 50  # expert attempts per task (only successes are written)
    out: str = "data/demos"  # root folder; the dataset goes to <out>/<task_suite>_no_noops/1.0.0/
    num_workers: int = 2  # simulator processes
    tasks: list[int] | None = None  # task ids; None = every task of the suite
    seed: int = 0  # episode e of task t places objects with env seed `seed * 100_000 + 1_000 * t + e`
    max_steps: int | None = None  # per episode; None = the suite's eval limit (SUITE_MAX_STEPS)
    libero_assets: str | None = None  # LIBERO assets folder; None = $VLA_LIBERO_ASSETS or LIBERO's own

    def validate(self) -> None:
        check_suite(self.task_suite)
        if self.episodes_per_task < 1 or self.num_workers < 1:
            raise ValueError(
                f"episodes_per_task and num_workers must be >= 1, got {self.episodes_per_task}, {self.num_workers}"
            )
        target = Path(self.out) / f"{self.task_suite}_no_noops"
        if target.exists():
            raise FileExistsError(f"{target} already exists: choose another --out or delete it")


@dataclass
class _Episode:
    task_id: int
    seed: int
    expert: ScriptedExpert
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    frames: dict[str, list] = field(default_factory=lambda: {k: [] for k in FRAME_KEYS})

    def act(self) -> np.ndarray:
        """The expert's action, recorded with the observation it was taken from (as the regenerated data)."""
        action, obs = self.expert.act(self.obs), self.obs
        frame = {"image": upright(obs["agentview_image"]), "wrist_image": upright(obs["robot0_eye_in_hand_image"]),
                 "state": libero_state(obs), "joint_state": obs["robot0_joint_pos"].astype(np.float32),
                 "action": action.astype(np.float32)}  # fmt: skip
        for key, value in frame.items():
            self.frames[key].append(value)
        return action


def rollouts(pool: EnvPool, cfg: CollectConfig, task_ids: list[int], stats: dict[int, dict[str, Any]]):
    """Run every (task, episode) with the expert, keeping all workers busy; yield each successful episode's Episode
    dict (docs/DESIGN.md) with no-op steps dropped, and count outcomes per task into `stats`."""
    from tqdm import tqdm

    max_steps = cfg.max_steps or SUITE_MAX_STEPS[cfg.task_suite]
    queue = deque((t, e) for t in task_ids for e in range(cfg.episodes_per_task))
    running: dict[int, _Episode] = {}
    with tqdm(total=len(queue), desc=f"{cfg.task_suite} demos", unit="ep") as bar:

        def finish(w: int, outcome: str, error: str | None = None) -> _Episode:
            ep = running.pop(w)
            stats[ep.task_id][outcome] += 1
            stats[ep.task_id]["steps"].append(len(ep.frames["action"]))
            bar.update()
            bar.set_postfix(ok=sum(s["success"] for s in stats.values()))
            if error:
                log.warning("task %d seed %d: error\n%s", ep.task_id, ep.seed, error)
            return ep

        while queue or running:
            requests: dict[int, Any] = {}
            for w in range(pool.num_workers):
                if w in running:
                    try:
                        requests[w] = running[w].act()
                    except Exception:  # an expert bug ends its episode as an error, not the collection
                        finish(w, "error", traceback.format_exc())
                elif queue:
                    task_id, index = queue.popleft()
                    seed = cfg.seed * 100_000 + 1_000 * task_id + index
                    running[w] = _Episode(task_id, seed, ScriptedExpert.from_bddl(pool.task_info(task_id).bddl_file))
                    requests[w] = ResetRequest(task_id, init_state=None, seed=seed)  # random placement + settle
            for w, result in pool.submit(requests).items():
                started, ep = isinstance(requests[w], ResetRequest), running[w]
                if result.error:
                    finish(w, "error", result.error)
                elif result.done and not started:  # success during the settle steps is ignored, as in the eval
                    finish(w, "success")
                    keep = noop_mask(np.stack(ep.frames["action"]))
                    stats[ep.task_id]["kept_steps"].append(int(keep.sum()))
                    yield {k: np.stack(v)[keep] for k, v in ep.frames.items()} | {
                        "language_instruction": pool.task_info(ep.task_id).language,
                        "file_path": f"scripted_expert/{cfg.task_suite}/task{ep.task_id}_seed{ep.seed}",
                    }
                elif len(ep.frames["action"]) >= max_steps:
                    finish(w, "failure")
                else:
                    ep.obs = result.obs


def _row(task: TaskInfo, s: dict[str, Any]) -> dict[str, Any]:
    attempts = s["success"] + s["failure"] + s["error"]
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {"task_id": task.task_id, "task": task.language, "attempts": attempts, "successes": s["success"],
            "failures": s["failure"], "errors": s["error"], "success_rate": s["success"] / max(attempts, 1),
            "mean_steps": mean(s["steps"]), "mean_kept_steps": mean(s["kept_steps"])}  # fmt: skip


def collect(cfg: CollectConfig) -> dict[str, Any]:
    """Collect, write the dataset and `<out>/collect_summary.json`; returns the summary (per-task rows under
    "tasks", the dataset path, wall time, unsupported tasks)."""
    cfg.validate()
    started = time.perf_counter()
    with EnvPool(cfg.task_suite, cfg.num_workers, assets_dir=cfg.libero_assets) as pool:
        tasks = [pool.task_info(t) for t in cfg.tasks] if cfg.tasks is not None else pool.tasks
        unsupported = {}
        for task in tasks:
            try:
                ScriptedExpert.from_bddl(task.bddl_file)
            except UnsupportedTaskError as err:
                unsupported[task.task_id] = str(err)
                log.warning("skipping task %d (%s): %s", task.task_id, task.language, err)
        tasks = [t for t in tasks if t.task_id not in unsupported]
        stats = {t.task_id: {"success": 0, "failure": 0, "error": 0, "steps": [], "kept_steps": []} for t in tasks}
        from vla.rlds import import_tf, write_rlds_dataset  # TF only in this process; the simulators run in workers

        import_tf()[1].disable_progress_bar()  # one progress bar: ours
        episodes = rollouts(pool, cfg, [t.task_id for t in tasks], stats)
        dataset = write_rlds_dataset(episodes, Path(cfg.out), f"{cfg.task_suite}_no_noops")
    rows = [_row(t, stats[t.task_id]) for t in tasks]
    summary = {"config": asdict(cfg), "dataset": str(dataset), "wall_time_s": time.perf_counter() - started,
               "tasks": rows, "unsupported_tasks": unsupported}  # fmt: skip
    write_json_atomic(Path(cfg.out) / SUMMARY_FILE, summary)
    return summary

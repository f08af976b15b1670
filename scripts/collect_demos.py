"""Collect scripted-expert LIBERO demonstrations as an RLDS dataset `<out>/<suite>_no_noops/1.0.0/`, recorded as
OpenVLA's regenerated data (reference §9): 256² images rotated 180°, state, joint state, actions, no-op steps dropped,
failed episodes dropped. Initial states come from LIBERO's random placement, never the fixed eval states.

    python scripts/collect_demos.py --task_suite libero_spatial --episodes_per_task 50 --out data/demos --num_workers 2
    python scripts/collect_demos.py --task_suite libero_spatial --episodes_per_task 2 --out /tmp/demos --tasks 0,1
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.expert import ScriptedExpert
from vla.libero_env import (
    SUITE_MAX_STEPS,
    EnvPool,
    ResetRequest,
    check_suite,
    libero_state,
    noop_mask,
    upright,
)

log = logging.getLogger("collect_demos")


@dataclass
class CollectConfig:
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
    frames: dict[str, list] = field(
        default_factory=lambda: {k: [] for k in ("image", "wrist_image", "state", "joint_state", "action")}
    )


def _record(ep: _Episode, action: np.ndarray) -> None:
    """Store the observation the action was taken from, as the regenerated LIBERO data stores it."""
    ep.frames["image"].append(upright(ep.obs["agentview_image"]))
    ep.frames["wrist_image"].append(upright(ep.obs["robot0_eye_in_hand_image"]))
    ep.frames["state"].append(libero_state(ep.obs))
    ep.frames["joint_state"].append(ep.obs["robot0_joint_pos"].astype(np.float32))
    ep.frames["action"].append(action.astype(np.float32))


def rollouts(pool: EnvPool, cfg: CollectConfig, task_ids: list[int], stats: dict[int, dict[str, Any]]):
    """Run every (task, episode) with the expert, keeping all workers busy; yield each successful episode's Episode
    dict (docs/DESIGN.md) with no-op steps dropped, and count outcomes per task into `stats`."""
    from tqdm import tqdm

    max_steps = cfg.max_steps or SUITE_MAX_STEPS[cfg.task_suite]
    queue = deque((t, e) for t in task_ids for e in range(cfg.episodes_per_task))
    running: dict[int, _Episode] = {}
    with tqdm(total=len(queue), desc=f"{cfg.task_suite} demos", unit="ep") as bar:
        while queue or running:
            requests: dict[int, Any] = {}
            for w in range(pool.num_workers):
                if w not in running and queue:
                    task_id, index = queue.popleft()
                    seed = cfg.seed * 100_000 + 1_000 * task_id + index
                    running[w] = _Episode(task_id, seed, ScriptedExpert.from_bddl(pool.task_info(task_id).bddl_file))
                    requests[w] = ResetRequest(task_id, init_state=None, seed=seed)  # random placement + settle
                elif w in running:
                    requests[w] = running[w].expert.act(running[w].obs)
                    _record(running[w], requests[w])
            for w, result in pool.submit(requests).items():
                ep, started = running[w], isinstance(requests[w], ResetRequest)
                steps = len(ep.frames["action"])
                outcome = "error" if result.error else "success" if result.done and not started else None
                outcome = outcome or ("failure" if steps >= max_steps else None)
                if outcome is None:
                    ep.obs = result.obs
                    continue
                del running[w]
                task = stats[ep.task_id]
                task[outcome] += 1
                task["steps"].append(steps)
                bar.update()
                bar.set_postfix(ok=sum(s["success"] for s in stats.values()))
                if outcome == "error":
                    log.warning("task %d seed %d: env error\n%s", ep.task_id, ep.seed, result.error)
                if outcome == "success":
                    yield _episode_dict(ep, pool.task_info(ep.task_id).language, cfg.task_suite, task)


def _episode_dict(ep: _Episode, language: str, suite: str, task: dict[str, Any]) -> dict[str, Any]:
    keep = noop_mask(np.stack(ep.frames["action"]))
    task["kept_steps"].append(int(keep.sum()))
    episode = {k: np.stack(v)[keep] for k, v in ep.frames.items()}
    return {
        **episode,
        "language_instruction": language,
        "file_path": f"scripted_expert/{suite}/task{ep.task_id}_seed{ep.seed}",
    }


def summarize(stats: dict[int, dict[str, Any]], languages: dict[int, str]) -> list[dict[str, Any]]:
    rows = []
    for task_id, s in stats.items():
        attempts = s["success"] + s["failure"] + s["error"]
        rows.append(
            {"task_id": task_id, "task": languages[task_id], "attempts": attempts, "successes": s["success"],
             "failures": s["failure"], "errors": s["error"], "success_rate": s["success"] / max(attempts, 1),
             "mean_steps": float(np.mean(s["steps"])) if s["steps"] else None,
             "mean_kept_steps": float(np.mean(s["kept_steps"])) if s["kept_steps"] else None}
        )  # fmt: skip
    return rows


def main(cfg: CollectConfig) -> dict[str, Any]:
    """Collect, write the dataset and `<out>/collect_summary.json`; returns the summary."""
    cfg.validate()
    started = time.perf_counter()
    with EnvPool(cfg.task_suite, cfg.num_workers, assets_dir=cfg.libero_assets) as pool:
        task_ids = cfg.tasks if cfg.tasks is not None else [t.task_id for t in pool.tasks]
        stats = {t: {"success": 0, "failure": 0, "error": 0, "steps": [], "kept_steps": []} for t in task_ids}
        from vla.rlds import write_rlds_dataset  # TensorFlow only in this process; the simulators run in workers

        dataset = write_rlds_dataset(rollouts(pool, cfg, task_ids, stats), Path(cfg.out), f"{cfg.task_suite}_no_noops")
        languages = {t: pool.task_info(t).language for t in task_ids}
    rows = summarize(stats, languages)
    summary = {
        "config": asdict(cfg),
        "dataset": str(dataset),
        "wall_time_s": time.perf_counter() - started,
        "tasks": rows,
    }
    (Path(cfg.out) / "collect_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'task':>4} {'success':>9} {'rate':>6} {'steps':>6} {'kept':>6}  instruction")
    for r in rows:
        print(f"{r['task_id']:>4} {r['successes']:>4}/{r['attempts']:<4} {r['success_rate']:>6.0%} "
              f"{r['mean_steps'] or 0:>6.0f} {r['mean_kept_steps'] or 0:>6.0f}  {r['task']}")  # fmt: skip
    print(f"dataset: {dataset}\nsummary: {Path(cfg.out) / 'collect_summary.json'}")
    return summary


def parse_args(argv: list[str] | None = None) -> CollectConfig:
    d = CollectConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task_suite", default=d.task_suite)
    parser.add_argument("--episodes_per_task", type=int, default=d.episodes_per_task)
    parser.add_argument("--out", default=d.out)
    parser.add_argument("--num_workers", type=int, default=d.num_workers)
    parser.add_argument("--tasks", type=lambda s: [int(t) for t in s.split(",")], default=d.tasks, help="e.g. 0,1")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--max_steps", type=int, default=d.max_steps)
    parser.add_argument("--libero_assets", default=d.libero_assets)
    return CollectConfig(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(parse_args())

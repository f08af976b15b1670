"""Scripted-expert LIBERO demonstrations, recorded as OpenVLA's regenerated data: 256² images rotated 180°, state,
joint state, actions, no-op steps dropped, failed episodes dropped, from LIBERO's random placements (never the
benchmark's fixed initial states). Optional DART-style noise: the env executes the expert's action plus Gaussian
noise, the dataset records the expert's clean action for the state reached. Optional learner takeover
(`vla.takeover`): a VLA drives each episode's first steps, unrecorded, and the expert recovers from where it left.
Written as RLDS or as a frame store."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla.env_pool import ResetRequest, open_pool
from vla.env_scheduler import Episode, Job, Scheduler
from vla.expert import ExpertConfig, ScriptedExpert, UnsupportedTaskError
from vla.expert_rehearsal import RehearsedMiss
from vla.frame_store import FrameStoreWriter
from vla.gl_check import RenderConfig
from vla.hub import check_checkpoint
from vla.libero_env import CAMERAS, SUITE_MAX_STEPS, TaskInfo, check_suite, libero_state, noop_mask, upright_cameras
from vla.normalization import write_json_atomic
from vla.policies import ExpertPolicy, Policy
from vla.takeover import TakeoverExpert, TakeoverPolicy

log = logging.getLogger(__name__)
SUMMARY_FILE = "collect_summary.json"
FORMATS = ("rlds", "frames")
NOISE_DIMS = {"xyz": 3, "xyzrpy": 6}  # the action dims noised (the gripper command, dim 6, never is)
# The cameras each format records: RLDS keeps the modified_libero_rlds layout (image and wrist_image); the frame store
# keeps OpenVLA's one image, so its collection renders agentview alone (rendering is most of a CPU step: 5.1 raw
# steps/s with both cameras, 8.2 with agentview, 58 with none on the 2-core machine, docs/PERFORMANCE.md)
FORMAT_CAMERAS = {"rlds": CAMERAS, "frames": ("agentview",)}


@dataclass
class CollectConfig:
    """One demonstration run: which tasks, how many expert attempts each, noise, where the dataset goes."""

    task_suite: str = "libero_spatial"  # libero_spatial | libero_object | libero_goal | libero_10 | libero_90
    episodes_per_task: int = 50  # expert attempts per task (only successes are written)
    out: str = "data/demos"  # root folder; the dataset goes to <out>/<task_suite>_no_noops/
    num_workers: int = 2  # simulator processes
    tasks: list[int] | None = None  # task ids; None = every task of the suite
    seed: int = 0  # episode e of task t places objects with env seed `seed * 100_000 + 1_000 * t + e`
    max_steps: int | None = None  # per episode; None = the suite's eval limit (SUITE_MAX_STEPS)
    libero_assets: str | None = None  # LIBERO assets folder; None = $VLA_LIBERO_ASSETS or LIBERO's own
    action_noise: float = 0.0  # std of Gaussian noise on the executed deltas (units of the [-1, 1] action)
    noise_dims: str = "xyz"  # xyz | xyzrpy: the deltas noised. Rotation noise makes the clean rpy labels the expert's
    # correction of random tilts: at 0.05 already 96 % of roll/pitch labels change bin every frame (16-19 % clean),
    # and a model trained on 0.15 xyzrpy noise matched 3-8 % of rpy tokens. xyz noise leaves the labels' spread clean
    format: str | None = None  # rlds (needs TensorFlow) | frames (vla.frame_store); None: rlds if TF is installed
    gl: str | None = None  # MuJoCo GL back-end of the workers: egl | osmesa; None: $MUJOCO_GL, else egl
    egl_devices: list[int] | None = None  # EGL device ids the workers render on (round-robin); None: visible GPUs
    hard_reset: bool = False  # random placements are always hard resets (env_pool._WorkerEnv.reset); see EvalConfig
    miss_height: float = 0.0  # > 0: every pick first misses, closing this far (m) above the grasp point, ...
    miss_steps: int = 30  # ... and carry the empty grip up to this many steps, then recover; only that is recorded
    miss_fraction: float = 1.0  # with miss_height > 0: the share of episodes that rehearse; the rest are honest picks
    learner_checkpoint: str | None = None  # a VLA checkpoint that drives each episode's first steps (vla.takeover) ...
    learner_min_steps: int = 10  # ... for a number of steps drawn per episode in [min, max], unrecorded; then the
    learner_max_steps: int = 100  # expert takes over from the state the learner left, recorded
    learner_fraction: float = 1.0  # the share of episodes with a learner part; the rest are ordinary demonstrations

    @property
    def dataset_name(self) -> str:
        return f"{self.task_suite}_no_noops"

    def _validate_learner(self) -> None:
        if self.miss_height > 0:
            raise ValueError("learner_checkpoint and miss_height are two ways to start a recovery: choose one")
        if not 1 <= self.learner_min_steps <= self.learner_max_steps or not 0 <= self.learner_fraction <= 1:
            raise ValueError(f"learner steps need 1 <= learner_min_steps <= learner_max_steps and learner_fraction "
                             f"in [0, 1], got {self.learner_min_steps}, {self.learner_max_steps}, "
                             f"{self.learner_fraction}")  # fmt: skip
        max_steps = self.max_steps or SUITE_MAX_STEPS[self.task_suite]
        if max_steps <= self.learner_max_steps + 100:
            raise ValueError(f"max_steps {max_steps} leaves the expert fewer than 100 steps after a learner part "
                             f"of up to {self.learner_max_steps}: pass --max_steps "
                             f"{self.learner_max_steps + 220}")  # fmt: skip
        check_checkpoint(self.learner_checkpoint)  # a local dir or a hub id, as eval.py takes it; loads nothing
        local = Path(self.learner_checkpoint).expanduser()
        if local.is_dir() and not (local / "config.json").is_file():
            raise FileNotFoundError(f"learner_checkpoint {self.learner_checkpoint} has no config.json: pass a "
                                    "checkpoint directory (e.g. checkpoints/small-libero-spatial)")  # fmt: skip

    def resolved_format(self) -> str:
        """`format`, else rlds when TensorFlow is installed (found without importing it), else frames."""
        if self.format is not None:
            return self.format
        return "rlds" if importlib.util.find_spec("tensorflow") is not None else "frames"

    def validate(self) -> None:
        check_suite(self.task_suite)
        if self.episodes_per_task < 1 or self.num_workers < 1:
            raise ValueError(
                f"episodes_per_task and num_workers must be >= 1, got {self.episodes_per_task}, {self.num_workers}"
            )
        if not self.miss_height >= 0 or self.miss_steps < 1 or not 0 <= self.miss_fraction <= 1:
            raise ValueError(f"miss_height must be >= 0, miss_steps >= 1 and miss_fraction in [0, 1], got "
                             f"{self.miss_height}, {self.miss_steps}, {self.miss_fraction}")  # fmt: skip
        if self.learner_checkpoint is not None:
            self._validate_learner()
        if not self.action_noise >= 0:
            raise ValueError(f"action_noise is a standard deviation: must be >= 0, got {self.action_noise}")
        if self.noise_dims not in NOISE_DIMS:
            raise ValueError(f"unknown noise_dims {self.noise_dims!r}: choose {' or '.join(NOISE_DIMS)}")
        if self.format not in (None, *FORMATS):
            raise ValueError(f"unknown format {self.format!r}: choose rlds or frames")
        if self.resolved_format() == "rlds" and importlib.util.find_spec("tensorflow") is None:
            raise ValueError("format rlds needs TensorFlow, which is not installed: pass --format frames")
        target = Path(self.out) / self.dataset_name
        if target.exists():
            raise FileExistsError(f"{target} already exists: choose another --out or delete it")


class _DemoRecorder:
    """The scheduler's action hook: records each step's observation (its images already upright: the pool's
    `upright_cameras`) with the expert's clean action, and returns the action to execute (with noise when
    `action_noise` > 0; each episode's noise is seeded by its env seed). `skip(slot)`: True for an action to execute
    but not record (a rehearsed miss, `vla.expert_rehearsal`)."""

    def __init__(self, action_noise: float, noise_dims: str = "xyz", skip: Callable[[int], bool] | None = None):
        self.action_noise, self.dims, self.skip = action_noise, NOISE_DIMS[noise_dims], skip

    def __call__(self, ep: Episode, action: np.ndarray) -> np.ndarray:
        if self.skip is None or not self.skip(ep.slot):
            self._record(ep, action)
        if self.action_noise == 0:
            return action
        if "rng" not in ep.data:
            ep.data["rng"] = np.random.default_rng(ep.job.request.seed)
        rng = ep.data["rng"]
        noisy = np.array(action, dtype=np.float64)
        noisy[: self.dims] = np.clip(noisy[: self.dims] + rng.normal(0, self.action_noise, self.dims), -1, 1)
        return noisy

    @staticmethod
    def _record(ep: Episode, action: np.ndarray) -> None:
        obs = ep.obs
        frame = {"image": obs["image"], "wrist_image": obs.get("wrist_image"), "state": libero_state(obs),
                 "joint_state": obs["robot0_joint_pos"].astype(np.float32),
                 "action": np.asarray(action, dtype=np.float32)}  # fmt: skip
        frame = {key: value for key, value in frame.items() if value is not None}  # no wrist camera: none recorded
        if "frames" not in ep.data:
            ep.data["frames"] = {key: [] for key in frame}
        frames = ep.data["frames"]
        for key, value in frame.items():
            frames[key].append(value)


def learner_policy(cfg: CollectConfig) -> Policy:
    """`cfg.learner_checkpoint` as `eval.py` loads it (fast decoding on CUDA), reading the renders on the host."""
    from vla.evaluation import EvalConfig
    from vla.policies import build_policy

    return build_policy(EvalConfig(policy="vla", checkpoint=cfg.learner_checkpoint, task_suite=cfg.task_suite,
                                   center_crop=True, worker_images=False))  # fmt: skip


def demo_jobs(cfg: CollectConfig, tasks: list[TaskInfo]) -> list[Job]:
    """One job per (task, episode): LIBERO's random placement under a fixed env seed, then the settle steps."""
    jobs = []
    for task in tasks:
        for index in range(cfg.episodes_per_task):
            seed = cfg.seed * 100_000 + 1_000 * task.task_id + index
            jobs.append(Job(task, ResetRequest(task.task_id, init_state=None, seed=seed), key=seed))
    return jobs


def rollouts(scheduler: Scheduler, jobs: list[Job], suite: str, stats: dict[int, dict[str, Any]]):
    """Run `jobs`; yield each successful episode's Episode dict (docs/DESIGN.md) with no-op steps dropped, and
    count outcomes per task into `stats`."""
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc=f"{suite} demos", unit="ep") as bar:
        for outcome in scheduler.run(jobs):
            ep, task = outcome.episode, outcome.episode.job.task
            frames = ep.data.get("frames", {"action": []})  # none when it ended before a step
            stats[task.task_id][outcome.status] += 1
            stats[task.task_id]["steps"].append(len(frames["action"]))
            bar.update()
            bar.set_postfix(ok=sum(s["success"] for s in stats.values()))
            if outcome.status == "error":
                log.warning("task %d seed %d: error\n%s", task.task_id, ep.job.key, outcome.error)
            if outcome.status != "success":
                stats[task.task_id]["failed_env_seeds"].append(ep.job.key)  # seed·100,000 + 1,000·task + episode
                continue
            keep = noop_mask(np.stack(frames["action"])) if frames["action"] else np.zeros(0, bool)
            if not keep.any():  # no step recorded, or only no-ops: a learner's success before the takeover, or one
                stats[task.task_id]["unrecorded"] += 1  # that ends while the expert's close holds still
                continue
            stats[task.task_id]["kept_steps"].append(int(keep.sum()))
            yield {k: np.stack([x for x, kept in zip(v, keep, strict=True) if kept]) for k, v in frames.items()} | {
                "language_instruction": task.language,
                "file_path": f"scripted_expert/{suite}/task{task.task_id}_seed{ep.job.key}",
            }


def _row(task: TaskInfo, s: dict[str, Any]) -> dict[str, Any]:
    attempts = s["success"] + s["failure"] + s["error"]
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {"task_id": task.task_id, "task": task.language, "attempts": attempts, "successes": s["success"],
            "failures": s["failure"], "errors": s["error"], "success_rate": s["success"] / max(attempts, 1),
            "mean_steps": mean(s["steps"]), "mean_kept_steps": mean(s["kept_steps"]),
            "unrecorded_successes": s["unrecorded"], "failed_env_seeds": sorted(s["failed_env_seeds"])}  # fmt: skip


def write_episodes(episodes, out: Path, name: str, fmt: str) -> Path:
    """Write an Episode-dict stream as RLDS (TensorFlow, imported here only) or as a frame store; returns its path."""
    if fmt == "rlds":
        from vla.rlds import import_tf, write_rlds_dataset

        import_tf()[1].disable_progress_bar()  # one progress bar: ours
        return write_rlds_dataset(episodes, out, name)
    writer = FrameStoreWriter(out / name, name)  # <out>/<name>/, as the RLDS layout
    for episode in episodes:
        writer.add_episode(episode)
    return writer.close()


def collect(cfg: CollectConfig, policy: Policy | None = None) -> dict[str, Any]:
    """Collect, write the dataset and `<out>/collect_summary.json`; returns the summary (per-task rows under
    "tasks", the dataset path, format, wall time, timing, unsupported tasks). `policy`: the scripted expert."""
    cfg.validate()
    fmt, started = cfg.resolved_format(), time.perf_counter()
    if policy is None:  # the scripted expert; with miss_height > 0 every pick rehearses a miss first
        miss = ExpertConfig(miss_height=cfg.miss_height, miss_steps=cfg.miss_steps, miss_fraction=cfg.miss_fraction)
        policy = ExpertPolicy(RehearsedMiss, config=miss) if cfg.miss_height > 0 else ExpertPolicy()
        if cfg.learner_checkpoint is not None:
            policy = TakeoverPolicy(learner_policy(cfg), (cfg.learner_min_steps, cfg.learner_max_steps),
                                    cfg.learner_fraction)  # fmt: skip
    render = RenderConfig(gl=cfg.gl, egl_devices=cfg.egl_devices)
    with open_pool(cfg.task_suite, cfg.num_workers, FORMAT_CAMERAS[fmt], render, cfg.libero_assets, cfg.hard_reset,
                   obs_transform=upright_cameras) as pool:  # fmt: skip
        tasks = [pool.task_info(t) for t in cfg.tasks] if cfg.tasks is not None else pool.tasks
        unsupported = {}
        for task in tasks:
            try:
                expert_class = ScriptedExpert if cfg.learner_checkpoint is None else TakeoverExpert
                planned = expert_class.from_bddl(task.bddl_file)
                if expert_class is TakeoverExpert and not isinstance(planned, TakeoverExpert):
                    raise UnsupportedTaskError("not a pick from above: the expert cannot take over from a learner")
            except UnsupportedTaskError as err:
                unsupported[task.task_id] = str(err)
                log.warning("skipping task %d (%s): %s", task.task_id, task.language, err)
        tasks = [t for t in tasks if t.task_id not in unsupported]
        stats = {t.task_id: {"success": 0, "failure": 0, "error": 0, "steps": [], "kept_steps": [], "unrecorded": 0,
                             "failed_env_seeds": []} for t in tasks}  # fmt: skip
        max_steps = cfg.max_steps or SUITE_MAX_STEPS[cfg.task_suite]
        recorder = _DemoRecorder(cfg.action_noise, cfg.noise_dims, getattr(policy, "rehearsing", None))
        scheduler = Scheduler(pool, policy, max_steps, on_action=recorder)
        episodes = rollouts(scheduler, demo_jobs(cfg, tasks), cfg.task_suite, stats)
        dataset = write_episodes(episodes, Path(cfg.out), cfg.dataset_name, fmt)
    log.info(scheduler.timing.line())
    rows = [_row(t, stats[t.task_id]) for t in tasks]
    summary = {"config": asdict(cfg), "dataset": str(dataset), "format": fmt,
               "wall_time_s": time.perf_counter() - started, "timing": scheduler.timing.as_dict(),
               "timing_line": scheduler.timing.line(), "tasks": rows,
               "unsupported_tasks": unsupported}  # fmt: skip
    if isinstance(policy, TakeoverPolicy):
        summary["takeover"] = policy.summary()
    write_json_atomic(Path(cfg.out) / SUMMARY_FILE, summary)
    return summary

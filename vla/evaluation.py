"""LIBERO evaluation with OpenVLA's protocol on parallel env workers: the benchmark's fixed initial states, 10
settle steps, the suite's step limit, success = LIBERO's `done`; per-episode JSONL (resumable), summary with Wilson
CIs (`vla.reporting`). Episodes run through `vla.env_scheduler`; simulation only in `EnvPool`'s spawned workers, so
this process may hold TensorFlow (for `libero_image`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from vla.env_pool import ResetRequest, open_pool
from vla.env_scheduler import Episode, Job, Scheduler
from vla.files import append_jsonl
from vla.gl_check import RenderConfig, devices_beside
from vla.hub import check_checkpoint
from vla.libero_env import SUITE_MAX_STEPS, TaskInfo, check_suite, list_tasks, load_init_states, setup_libero
from vla.libero_io import WorkerImages
from vla.normalization import write_json_atomic
from vla.policies import Policy
from vla.reporting import (  # noqa: F401  (wilson_interval, record_in_training_run: re-exported for callers)
    STATUSES,
    format_table,
    log_wandb,
    read_episodes,
    record_in_training_run,
    summarize,
    wilson_interval,
)
from vla.runtime import WANDB_MODES, check_quantization, seed_everything, start_wandb

log = logging.getLogger(__name__)

POLICY_KINDS = ("vla", "server", "expert", "random")
EPISODES_FILE, SUMMARY_FILE, CONFIG_FILE = "episodes.jsonl", "summary.json", "eval_config.json"
VIDEO_FPS = 30  # OpenVLA's replay videos
# Settings whose change makes old episodes incomparable: `resume` refuses to mix runs that differ in them.
RESUME_KEYS = ("task_suite", "policy", "checkpoint", "server_url", "unnorm_key", "center_crop", "quantization",
               "max_steps", "seed")  # fmt: skip


@dataclass
@dataclass
class EvalConfig:
    """One LIBERO evaluation run. Defaults follow OpenVLA's LIBERO eval config (`GenerateConfig`)."""

    task_suite: str = "libero_spatial"  # libero_spatial | libero_object | libero_goal | libero_10 | libero_90
    policy: str = "vla"  # vla (a checkpoint) | server (a policy server) | expert (scripted, privileged state) | random
    checkpoint: str | None = None  # VLA checkpoint directory (ours or official format) or hub id; policy=vla needs it
    server_url: str | None = None  # policy=server: http://HOST:PORT of scripts/serve.py or any server of its /act API
    model_family: str = "openvla"  # the official script's model family; only openvla (the format this project reads)
    unnorm_key: str | None = None  # statistics to un-normalize actions; None: `<suite>` or `<suite>_no_noops`
    center_crop: bool = True  # center crop (area 0.9) before the model: True for models trained with image aug
    quantization: str | None = None  # None (bf16) | 8bit | 4bit (bitsandbytes) | fp8 (FP8 tensor cores)
    device: str | None = None  # torch device of the VLA; None: cuda if available, else cpu
    dtype: str | None = None  # VLA weight dtype (torch dtype name); None: bfloat16 on CUDA, float32 on CPU (faster)
    num_trials_per_task: int = 50  # episodes per task, on the benchmark's fixed initial states 0..n-1 (≤ 50)
    tasks: list[int] | None = None  # task ids to evaluate (default: the whole suite)
    max_steps: int | None = None  # policy steps per episode; None: the suite's limit (SUITE_MAX_STEPS)
    num_envs: int = 1  # parallel simulation worker processes (one env each)
    # seconds the scheduler may wait for the other stepping envs before one batched policy call (0: act on whatever
    # has arrived, greedy: simulated best, docs/PERFORMANCE.md); None: the policy's `gather_s` hint, else 0. Resets are
    # never waited for
    gather_s: float | None = None
    fast_decoding: bool | None = None  # VLA: static-cache CUDA-graph decoder with torch.compile; None: on CUDA only
    # with fast_decoding: compile its elementwise ops (torch.compile); false saves the compile time at start
    compile_decoding: bool = True
    # VLA / server: prepare the model's images (JPEG round trip, resize, crop) in the simulation workers, numpy ops;
    # None: where this process would use the numpy ops too (no TensorFlow: the same pixels), else on this process
    worker_images: bool | None = None
    gl: str | None = None  # MuJoCo GL back-end of the workers: egl | osmesa; None: $MUJOCO_GL, else egl
    # EGL device ids the workers render on (round-robin); None: the visible GPUs other than a VLA policy's where there
    # are others (a render on the policy's GPU slows its calls), else all visible
    egl_devices: list[int] | None = None
    seed: int = 7  # seeds random / numpy / torch in this process (OpenVLA's protocol seed)
    env_seed: int = 0  # `env.seed()` before every reset (OpenVLA seeds each env once with 0)
    # rebuild the sim at every reset as LIBERO does by default (11x slower resets; fixtures then stand where the env's
    # reset count puts them); False: robosuite's soft reset, fixtures placed by `env_seed` alone, same episodes
    hard_reset: bool = False
    out_dir: str | None = None  # results folder; None: <local_log_dir>/<suite>-<policy>-<date-time>[--<run_id_note>]
    local_log_dir: str = "runs/eval"  # parent of the results folder when out_dir is None (official: its log folder)
    run_id_note: str | None = None  # appended to the results folder's name as `--<note>`
    resume: bool = False  # continue the run in out_dir, skipping episodes already in its episodes.jsonl
    retry_errors: bool = False  # with resume: run again the episodes recorded as `error`
    save_videos: bool = False  # one mp4 per episode under out_dir/videos (30 fps)
    # print the results so far of the evaluation in out_dir (cut off, crashed or still running) from its own files and
    # exit: no model, no simulator, nothing written; its eval_config.json says what it evaluates (other flags unused)
    report_only: bool = False
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
        if self.model_family != "openvla":
            raise ValueError(
                f"model_family {self.model_family!r} is not supported: only 'openvla' (OpenVLA-format checkpoints, "
                "official or this project's); evaluate other families with their own code"
            )
        check_quantization(self.quantization)
        self._validate_policy_source()
        if self.gl not in (None, "egl", "osmesa"):
            raise ValueError(f"unknown gl {self.gl!r}: choose egl (GPU or Mesa) or osmesa (CPU)")
        for name in ("num_trials_per_task", "num_envs", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.gather_s is not None and self.gather_s < 0:
            raise ValueError(f"gather_s must be >= 0 seconds, got {self.gather_s}: pass --gather_s 0 to act greedily, "
                             "or leave it unset for the policy's default")  # fmt: skip
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

    def _validate_policy_source(self) -> None:
        """The checkpoint (policy=vla) or server URL (policy=server) is given and well formed; none of them otherwise."""
        if self.policy == "server":
            if not self.server_url:
                raise ValueError("policy=server needs --server_url http://HOST:PORT (see scripts/serve.py)")
            check_server_url(self.server_url)
        elif self.server_url is not None:
            raise ValueError(f"server_url applies to policy=server only (policy is {self.policy!r})")
        if self.policy == "vla":
            if not self.checkpoint:
                raise ValueError("policy=vla needs --checkpoint (= --pretrained_checkpoint): a directory or a hub id")
            if "image_aug" in self.checkpoint and not self.center_crop:  # the official script's assertion
                raise ValueError(f"{self.checkpoint} was trained with image augmentation: pass --center_crop true")
            check_checkpoint(self.checkpoint)  # a local dir, or a hub id (cached when HF_HUB_OFFLINE=1); loads nothing
        elif self.checkpoint is not None or self.quantization is not None:
            raise ValueError(f"checkpoint and quantization apply to policy=vla only (policy is {self.policy!r})")
        if self.out_dir is not None and self.local_log_dir != EvalConfig.local_log_dir:
            raise ValueError("pass --out_dir (the results folder) or --local_log_dir (its parent), not both")

    @property
    def episode_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else SUITE_MAX_STEPS[self.task_suite]

    def run_dir(self) -> Path:
        """out_dir, else a new folder `<local_log_dir>/<suite>-<policy>-<date-time>[--<run_id_note>]`."""
        if self.out_dir is not None:
            return Path(self.out_dir)
        name = f"{self.task_suite}-{self.policy}-{datetime.now():%Y%m%d-%H%M%S}"
        return Path(self.local_log_dir) / (f"{name}--{self.run_id_note}" if self.run_id_note else name)

    @property
    def render(self) -> RenderConfig:
        return RenderConfig(gl=self.gl, egl_devices=self.egl_devices)


def render_config(cfg: EvalConfig, policy: Policy) -> RenderConfig:
    """`cfg.render`; with `egl_devices` unset and a VLA on CUDA, the workers render on the other visible GPUs, if any
    (`gl_check.devices_beside`)."""
    device = getattr(getattr(policy, "vla", None), "device", None)
    if cfg.egl_devices is not None or getattr(device, "type", None) != "cuda":
        return cfg.render
    index = device.index if device.index is not None else 0  # "cuda": the current device, 0 unless set otherwise
    return dataclasses.replace(cfg.render, egl_devices=devices_beside(index))


def check_server_url(url: str) -> None:
    """`http(s)://HOST[:PORT][/prefix]`, or a ValueError naming what is wrong; nothing is contacted."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in 0..65535)
    except ValueError:
        raise ValueError(f"server_url {url!r} has a bad port: use http://HOST:PORT with PORT a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server_url {url!r} is not an http(s) URL: use http://HOST:PORT, e.g. http://127.0.0.1:8000")
    if parts.query or parts.fragment:
        raise ValueError(f"server_url {url!r} must not have a query or fragment: /act is appended to it")


class _Recorder:
    """Turns finished episodes into JSONL records (appended and flushed at once) and optional mp4s. As the scheduler's
    action hook it keeps, per step, the frame the policy saw (VLA: its 224² image; else the upright agentview)."""

    def __init__(self, cfg: EvalConfig, run_dir: Path, policy: Policy):
        self.cfg, self.run_dir, self.path, self.policy = cfg, run_dir, run_dir / EPISODES_FILE, policy
        self.step = getattr(getattr(policy, "vla", None), "training_step", None)  # of the weights loaded

    def on_action(self, ep: Episode, action: np.ndarray) -> np.ndarray:
        if self.cfg.save_videos:
            frame = self.policy.last_frames.get(ep.slot)
            if frame is None and "agentview_image" in ep.obs:
                frame = np.ascontiguousarray(ep.obs["agentview_image"][::-1, ::-1])
            if frame is not None:
                ep.data.setdefault("frames", []).append(frame)
        return action

    def finish(self, ep: Episode, status: str, error: str | None = None) -> dict[str, Any]:
        task, index = ep.job.task, ep.job.key
        frames = ep.data.get("frames")
        video = self._write_video(task, index, frames, status) if self.cfg.save_videos and frames else None
        record = {
            "task_suite": self.cfg.task_suite, "task_id": task.task_id, "task": task.language, "episode": index,
            "success": status == "success", "steps": ep.steps, "status": status, "error": error, "video": video,
            "wall_time_s": round(time.perf_counter() - ep.started, 3),
        }  # fmt: skip
        if self.step is not None:
            record["checkpoint_step"] = self.step
        append_jsonl(self.path, record)  # cuts off a torn last line first, so this record is not glued to it
        if error is not None:
            log.error("task %d episode %d: error\n%s", task.task_id, index, error)
        return record

    def _write_video(self, task: TaskInfo, index: int, frames: list[np.ndarray], status: str) -> str:
        import imageio.v2 as imageio

        path = self.run_dir / "videos" / f"task{task.task_id:03d}_ep{index:02d}_{status}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        imageio.mimwrite(path, frames, fps=VIDEO_FPS)
        return str(path.relative_to(self.run_dir))


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


def report(out_dir: str | Path) -> dict[str, Any]:
    """The results so far of the evaluation in `out_dir` (cut off by a time limit, crashed, or still running), from
    its own `eval_config.json` and `episodes.jsonl`: loads no model, starts no simulator, writes nothing. The summary's
    `complete` says whether every configured episode has a verdict; its tasks without records show 0/0."""
    run_dir = Path(out_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: --out_dir must be the folder of an evaluation (eval.py "
                                "writes its eval_config.json as it starts)")  # fmt: skip
    saved = json.loads(config_path.read_text())
    cfg = EvalConfig(**{f.name: saved[f.name] for f in dataclasses.fields(EvalConfig) if f.name in saved})
    episodes = run_dir / EPISODES_FILE
    records = read_episodes(episodes) if episodes.exists() else []  # none yet: no episode has finished
    return _summarize(cfg, records, _selected_tasks(cfg)) | {"run_dir": str(run_dir)}


def _selected_tasks(cfg: EvalConfig) -> list[TaskInfo]:
    """The tasks `cfg` evaluates: its `tasks` ids, else the whole suite."""
    all_tasks = list_tasks(cfg.task_suite)
    return [all_tasks[i] for i in cfg.tasks] if cfg.tasks is not None else all_tasks


def _summarize(cfg: EvalConfig, records: list[dict[str, Any]], tasks: list[TaskInfo]) -> dict[str, Any]:
    return summarize(
        records, tasks, task_suite=cfg.task_suite, policy=cfg.policy, checkpoint=cfg.checkpoint,
        num_trials_per_task=cfg.num_trials_per_task, max_steps=cfg.episode_steps,
    )  # fmt: skip


def plan_jobs(cfg: EvalConfig, records: list[dict[str, Any]]) -> tuple[list[TaskInfo], list[Job]]:
    """The selected tasks, and a Job for each (task, episode) still to run after `records`, in the order they run: its
    fixed initial state, `env_seed`."""
    tasks = _selected_tasks(cfg)
    finished = {(r["task_id"], r["episode"]) for r in records if not (cfg.retry_errors and r["status"] == "error")}
    pending = [(t, i) for t in tasks for i in range(cfg.num_trials_per_task) if (t.task_id, i) not in finished]
    init_states = {t.task_id: load_init_states(cfg.task_suite, t.task_id) for t in {t for t, _ in pending}}
    for task_id, states in init_states.items():
        if cfg.num_trials_per_task > len(states):
            raise ValueError(f"task {task_id} has {len(states)} initial states: num_trials_per_task must be <= that")
    jobs = [
        Job(t, ResetRequest(t.task_id, init_state=init_states[t.task_id][i], seed=cfg.env_seed), key=i)
        for t, i in pending
    ]
    return tasks, jobs


def eval_cameras(policy: Policy, save_videos: bool) -> tuple[str, ...]:
    """The cameras the workers render: the policy's own, plus agentview for videos (none: several times faster)."""
    cameras = tuple(policy.cameras)
    return cameras + ("agentview",) if save_videos and "agentview" not in cameras else cameras


def evaluate(cfg: EvalConfig, policy: Policy) -> dict[str, Any]:
    """Run (or resume) the evaluation `cfg` describes with `policy`; returns the summary also written to
    `<run_dir>/summary.json`, next to `episodes.jsonl` (one record per episode, appended as each finishes)."""
    from tqdm import tqdm

    cfg.validate()
    seed_everything(cfg.seed, deterministic=True)
    run_dir = cfg.run_dir()
    _prepare_run_dir(cfg, run_dir)
    recorder = _Recorder(cfg, run_dir, policy)
    records = read_episodes(recorder.path)
    mixed = sorted({r.get("checkpoint_step") for r in records} - {recorder.step}, key=str)
    if mixed:
        raise ValueError(f"{recorder.path} holds episodes of checkpoint step(s) {mixed}, but the loaded checkpoint is "
                         f"step {recorder.step}: evaluate it into a new --out_dir rather than mixing steps")  # fmt: skip
    tasks, jobs = plan_jobs(cfg, records)
    log.info("evaluating %s: %d episodes to run (%d already recorded) in %s", cfg, len(jobs), len(records), run_dir)
    run = None
    if cfg.wandb:
        run = start_wandb(mode=cfg.wandb_mode, project=cfg.wandb_project, entity=cfg.wandb_entity, name=run_dir.name,
                          run_dir=run_dir, config=dataclasses.asdict(cfg))  # fmt: skip
    new, num_workers, timing = [], min(cfg.num_envs, len(jobs)), None
    try:
        if jobs:
            cameras, transform = eval_cameras(policy, cfg.save_videos), getattr(policy, "worker_images", None)
            if isinstance(transform, WorkerImages) and not cfg.save_videos:  # no video: the model image alone
                transform = dataclasses.replace(transform, video_frames=False)
            render = render_config(cfg, policy)
            pool_args = (cfg.task_suite, num_workers, cameras, render, cfg.libero_assets, cfg.hard_reset, transform)
            with (
                open_pool(*pool_args) as pool,
                tqdm(total=len(jobs), desc=f"{cfg.task_suite} episodes", unit="ep") as bar,
            ):
                if hasattr(policy, "warm_up"):  # while the workers start: no graph capture mid-run
                    policy.warm_up(sorted({job.task.language for job in jobs}), num_workers)
                gather_s = getattr(policy, "gather_s", 0.0) if cfg.gather_s is None else cfg.gather_s
                scheduler = Scheduler(pool, policy, cfg.episode_steps, on_action=recorder.on_action, gather_s=gather_s)
                for outcome in scheduler.run(jobs):
                    record = recorder.finish(outcome.episode, outcome.status, outcome.error)
                    records.append(record)
                    new.append(record)
                    counts = {s: sum(r["status"] == s for r in new) for s in STATUSES}
                    bar.update()
                    bar.set_postfix(counts)
                    if run is not None:
                        run.log({"episodes": len(new), **{f"episodes/{k}": v for k, v in counts.items()}})
            timing = scheduler.timing
        summary = _summarize(cfg, records, tasks)
        summary["run_dir"] = str(run_dir)
        summary["checkpoint_step"] = recorder.step
        summary["this_session"] = {  # this invocation's throughput: policy steps over wall time, resets included
            "episodes": len(new), "num_envs": num_workers, "policy_steps": timing.steps if timing else 0,
            "wall_time_s": round(timing.wall_s, 2) if timing else 0.0,
            "policy_steps_per_s": round(timing.steps / timing.wall_s, 2) if timing and timing.wall_s else None,
        }  # fmt: skip
        summary["timing"] = timing.as_dict() if timing else None
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
        if summary["complete"]:
            record_in_training_run(cfg.checkpoint, summary)
        if timing is not None:
            log.info(timing.line())
        log.info("results in %s (%s)\n%s", run_dir, summary["this_session"], format_table(summary))
        if run is not None:
            log_wandb(run, summary)
    finally:
        if run is not None:
            run.finish()
    return summary

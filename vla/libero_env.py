"""LIBERO set-up (config.yaml, assets), suites and tasks, env creation, the observation conventions of OpenVLA's
regenerated data (upright images, `state`, no-op steps), and `EnvPool`: simulation in spawned worker processes that
never import TensorFlow (TensorFlow and LIBERO's renderer segfault in one process)."""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing as mp
import os
import signal
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

# Max policy steps per episode in OpenVLA's eval (reference §10): 1.1x-1.2x the longest training demo of each suite.
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
NUM_STEPS_WAIT = 10  # objects fall ~7 cm after placement; the eval waits this many dummy steps before acting
DUMMY_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # no motion, gripper open
DUMMY_ACTION.setflags(write=False)
CAMERAS = ("agentview", "robot0_eye_in_hand")
ENV_ASSETS = "VLA_LIBERO_ASSETS"  # env var naming the assets folder (ours: ../shared/libero_assets)
_REPO = Path(__file__).resolve().parents[1]


class LiberoSetupError(RuntimeError):
    """LIBERO is not installed or its assets / task files cannot be found."""


@dataclass(frozen=True)
class TaskInfo:
    """One task of a suite: `bddl_file` is the absolute path of its BDDL problem file."""

    task_id: int
    name: str
    language: str
    bddl_file: str


@dataclass(frozen=True)
class ResetRequest:
    """Reset one worker onto `task_id`: `init_state` (a fixed eval state) or None for LIBERO's random placement
    (`env.reset()` after `env.seed(seed)`); `settle` then steps `DUMMY_ACTION` `NUM_STEPS_WAIT` times."""

    task_id: int
    init_state: np.ndarray | None = None
    seed: int | None = None
    settle: bool = True


@dataclass
class StepResult:
    """What a worker returns: raw LIBERO observations (images upside down, see `upright`), the sparse reward,
    `done` (= task success), and `error` (None, or the traceback of an exception raised in the worker)."""

    obs: dict[str, np.ndarray] = field(default_factory=dict)
    reward: float = 0.0
    done: bool = False
    error: str | None = None


def _libero_package_dir() -> Path:
    try:
        spec = importlib.util.find_spec("libero.libero")
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        raise LiberoSetupError(
            "LIBERO is not installed: `pip install -e '.[libero]'` (libero==0.1.1, robosuite==1.4.0, mujoco==3.3.2)"
        )
    return Path(spec.origin).parent


def resolve_assets_dir(assets_dir: str | Path | None = None) -> Path:
    """The LIBERO assets folder: `assets_dir`, else `$VLA_LIBERO_ASSETS`, else LIBERO's own `libero/libero/assets`.
    A relative path is tried against the working directory, then against the repository root."""
    chosen = assets_dir if assets_dir is not None else os.environ.get(ENV_ASSETS)
    if chosen is None:
        path = _libero_package_dir() / "assets"
        source = "LIBERO's own assets folder"
    else:
        path = Path(chosen).expanduser()
        if not path.is_absolute() and not path.exists():
            path = _REPO / path
        source = "assets_dir" if assets_dir is not None else f"${ENV_ASSETS}"
    path = path.resolve()
    if not (path / "scenes").is_dir() or not (path / "stable_scanned_objects").is_dir():
        raise LiberoSetupError(
            f"LIBERO assets not found at {path} (from {source}; expected scenes/ and stable_scanned_objects/): pass "
            f"assets_dir= or set {ENV_ASSETS}, e.g. {ENV_ASSETS}=../shared/libero_assets on the project machines"
        )
    return path


def setup_libero(assets_dir: str | Path | None = None) -> Path:
    """Write `$LIBERO_CONFIG_PATH/config.yaml` (default `~/.libero`) before `libero.libero` is imported (else its
    import blocks on `input()`), and point LIBERO at the assets. Idempotent; returns the assets folder."""
    import yaml

    package = _libero_package_dir()
    assets = resolve_assets_dir(assets_dir)
    config_dir = Path(os.environ.setdefault("LIBERO_CONFIG_PATH", str(Path("~/.libero").expanduser())))
    config_file = config_dir / "config.yaml"
    config = {}
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text()) or {}
    wanted = {
        "benchmark_root": package,
        "bddl_files": package / "bddl_files",
        "init_states": package / "init_files",
        "datasets": package.parent / "datasets",
    }
    updated = dict(config)  # keep a user's own paths where they exist; fill in or repair the rest
    for key, path in wanted.items():
        if key not in updated or not Path(str(updated[key])).exists():
            updated[key] = str(path)
    updated["assets"] = str(assets)
    if updated != config:
        config_dir.mkdir(parents=True, exist_ok=True)
        tmp = config_file.with_name(f"config.yaml.{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(updated))
        os.replace(tmp, config_file)
    import libero.libero

    libero.libero._assets_path_cache = str(assets)  # libero 0.1.1 reads assets from here, not from config.yaml
    return assets


def list_tasks(suite: str) -> list[TaskInfo]:
    """The tasks of `suite` in LIBERO's order (task order index 0). Needs `setup_libero()` first; imports no
    simulator (safe beside TensorFlow)."""
    check_suite(suite)
    from libero.libero import benchmark

    bench = benchmark.get_benchmark_dict()[suite]()
    return [
        TaskInfo(i, bench.get_task(i).name, bench.get_task(i).language, str(bench.get_task_bddl_file_path(i)))
        for i in range(bench.n_tasks)
    ]


def load_init_states(suite: str, task_id: int) -> np.ndarray:
    """The benchmark's fixed initial sim states of one task, (50, state_dim) float64 (evaluation only)."""
    import torch
    from libero.libero import benchmark, get_libero_path

    check_suite(suite)
    task = benchmark.get_benchmark_dict()[suite]().get_task(task_id)
    path = Path(get_libero_path("init_states")) / task.problem_folder / task.init_states_file
    # PyTorch >= 2.6 defaults to weights_only=True, which rejects these numpy pickles.
    return np.asarray(torch.load(path, weights_only=False))


def check_suite(suite: str) -> None:
    if suite not in SUITE_MAX_STEPS:
        raise ValueError(f"unknown LIBERO suite {suite!r}: choose one of {sorted(SUITE_MAX_STEPS)}")


def make_env(bddl_file: str, *, image_size: int = 256, cameras: tuple[str, ...] = CAMERAS):
    """An `OffScreenRenderEnv` (Panda, OSC_POSE, 20 Hz) rendering `cameras` at image_size²; `cameras=()` turns
    rendering off (~7x faster, for expert tuning). Only call in a process that has not imported TensorFlow."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from libero.libero.envs import OffScreenRenderEnv

    return OffScreenRenderEnv(
        bddl_file_name=bddl_file,
        camera_heights=image_size,
        camera_widths=image_size,
        camera_names=list(cameras),
        use_camera_obs=bool(cameras),
    )


def upright(image: np.ndarray) -> np.ndarray:
    """Raw LIBERO render (H, W, 3) -> rotated 180° (H, W, 3): the orientation of OpenVLA's training images."""
    return np.ascontiguousarray(image[::-1, ::-1])


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis-angle (3,), angle in [0, 2π] (robosuite's `quat2axisangle`, which the
    regenerated LIBERO data used for `state`)."""
    w = float(np.clip(quat[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return np.asarray(quat[:3], dtype=np.float64) * 2.0 * np.arccos(w) / den


def libero_state(obs: dict[str, np.ndarray]) -> np.ndarray:
    """The RLDS `state` (8,) float32: eef position 3 + eef axis-angle 3 + gripper finger positions 2 (reference §9)."""
    eef_axis_angle = quat_to_axis_angle(obs["robot0_eef_quat"])
    return np.concatenate([obs["robot0_eef_pos"], eef_axis_angle, obs["robot0_gripper_qpos"]]).astype(np.float32)


def noop_mask(actions: np.ndarray, threshold: float = 1e-4) -> np.ndarray:
    """(T, 7) LIBERO actions -> (T,) bool, True for the steps to KEEP. A step is a no-op, and dropped, when
    ‖a[:6]‖ < threshold and its gripper equals the previous kept step's gripper (for the first step: the norm test
    alone) — `is_noop` of OpenVLA's regenerate_libero_dataset.py (reference §9)."""
    keep = np.zeros(len(actions), dtype=bool)
    last_gripper = None
    for t, action in enumerate(np.asarray(actions, dtype=np.float64)):
        still = np.linalg.norm(action[:6]) < threshold
        if not (still and (last_gripper is None or action[6] == last_gripper)):
            keep[t], last_gripper = True, action[6]
    return keep


class _WorkerEnv:
    """The env one worker owns: re-created when the task changes or after an error."""

    def __init__(self, suite: str, image_size: int, cameras: tuple[str, ...]):
        self.tasks = list_tasks(suite)
        self.image_size, self.cameras = image_size, cameras
        self.env, self.task_id, self.ready = None, None, False

    def _discard(self) -> None:
        if self.env is not None:
            with contextlib.suppress(Exception):  # a broken env may fail to close; it is dropped either way
                self.env.close()
        self.env, self.task_id = None, None

    def reset(self, request: ResetRequest) -> StepResult:
        self.ready = False
        if self.env is None or self.task_id != request.task_id:
            self._discard()
            self.env = make_env(self.tasks[request.task_id].bddl_file, image_size=self.image_size, cameras=self.cameras)
            self.task_id = request.task_id
        if request.seed is not None:
            self.env.seed(request.seed)  # LIBERO seeds numpy's global RNG: the random placement depends on it
        obs = self.env.reset()
        if request.init_state is not None:
            obs = self.env.set_init_state(request.init_state)
        reward, done = 0.0, False
        for _ in range(NUM_STEPS_WAIT if request.settle else 0):
            obs, reward, done, _ = self.env.step(DUMMY_ACTION.copy())
        self.ready = True
        return StepResult(self._observe(obs), float(reward), bool(done))

    def step(self, action: np.ndarray) -> StepResult:
        if not self.ready:
            raise RuntimeError("step() before a successful reset(): reset this worker first")
        obs, reward, done, _ = self.env.step(np.asarray(action, dtype=np.float64))
        return StepResult(self._observe(obs), float(reward), bool(done))

    def _observe(self, obs: dict) -> dict[str, np.ndarray]:
        """LIBERO's observations plus `<region>_pos` for every BDDL region site (goal targets such as
        `flat_stove_1_cook_region` that no object position gives)."""
        out = {k: np.asarray(v) for k, v in obs.items()}
        inner = self.env.env
        for site in inner.object_sites_dict:
            out.setdefault(f"{site}_pos", np.array(inner.sim.data.get_site_xpos(site)))
        return out

    def handle(self, cmd: str, payload: Any) -> StepResult:
        try:
            return self.reset(payload) if cmd == "reset" else self.step(payload)
        except Exception:
            self.ready = False
            self._discard()  # the env may be broken: the next reset builds a fresh one
            return StepResult(error=traceback.format_exc())


def _worker_main(conn: Connection, suite: str, assets_dir: str, image_size: int, cameras: tuple[str, ...]) -> None:
    """Worker loop: answer ("reset", ResetRequest) / ("step", action) with a StepResult until "close" or until the
    parent goes away (its pipe end closes -> EOFError). A failed set-up is the answer to every request."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes the pool
    try:
        setup_libero(assets_dir)
        worker, setup_error = _WorkerEnv(suite, image_size, cameras), None
    except Exception:
        worker, setup_error = None, traceback.format_exc()
    while True:
        try:
            cmd, payload = conn.recv()
        except EOFError:
            break
        if cmd == "close":
            break
        conn.send(StepResult(error=setup_error) if worker is None else worker.handle(cmd, payload))
    if worker is not None:
        worker._discard()


class EnvPool:
    """`num_workers` LIBERO envs of one suite, each in its own spawned process. `reset`/`step` take a dict
    {worker index: request}, send every request first and then gather, so the workers simulate in parallel.
    A worker's exception comes back as `StepResult.error`; a worker that dies is restarted."""

    def __init__(
        self,
        suite: str,
        num_workers: int,
        *,
        assets_dir: str | Path | None = None,
        image_size: int = 256,
        cameras: tuple[str, ...] = CAMERAS,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.suite = suite
        self.assets_dir = setup_libero(assets_dir)
        self.tasks = list_tasks(suite)
        self._args = (suite, str(self.assets_dir), image_size, tuple(cameras))
        self._ctx = mp.get_context("spawn")  # a forked child would inherit the parent's TensorFlow, if loaded
        self._workers: list[tuple[mp.process.BaseProcess, Connection]] = [self._start(i) for i in range(num_workers)]

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def task_info(self, task_id: int) -> TaskInfo:
        if not 0 <= task_id < len(self.tasks):
            raise ValueError(f"task_id {task_id} out of range: {self.suite} has {len(self.tasks)} tasks")
        return self.tasks[task_id]

    def reset(self, requests: dict[int, ResetRequest]) -> dict[int, StepResult]:
        """Reset each given worker (in parallel); the results hold the first observations."""
        return self.submit(requests)

    def step(self, actions: dict[int, np.ndarray]) -> dict[int, StepResult]:
        """Step each given worker with its LIBERO action (7,), in parallel."""
        return self.submit(actions)

    def submit(self, requests: dict[int, ResetRequest | np.ndarray]) -> dict[int, StepResult]:
        """Reset the workers given a ResetRequest and step those given an action (7,), all in one parallel round
        (a scheduler that starts new episodes while others run keeps every worker busy)."""
        for request in requests.values():
            if isinstance(request, ResetRequest):
                self.task_info(request.task_id)
        return self._call(
            {
                i: ("reset", r) if isinstance(r, ResetRequest) else ("step", np.asarray(r, dtype=np.float64))
                for i, r in requests.items()
            }
        )

    def _start(self, index: int) -> tuple[mp.process.BaseProcess, Connection]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_worker_main, args=(child, *self._args), name=f"libero-env-{index}", daemon=True
        )
        proc.start()
        child.close()
        return proc, parent

    def _call(self, requests: dict[int, tuple[str, Any]]) -> dict[int, StepResult]:
        for i in requests:
            if not 0 <= i < len(self._workers):
                raise ValueError(f"worker index {i} out of range: the pool has {len(self._workers)} workers")
        sent = {}
        for i, message in requests.items():
            try:
                self._workers[i][1].send(message)
                sent[i] = True
            except (BrokenPipeError, ConnectionResetError, OSError):
                sent[i] = False
        results = {}
        for i in requests:
            try:
                if not sent[i]:
                    raise EOFError
                results[i] = self._workers[i][1].recv()
            except (EOFError, ConnectionResetError, OSError):
                proc = self._workers[i][0]
                proc.join(timeout=5)
                results[i] = StepResult(error=f"worker {i} died (exit code {proc.exitcode}); restarted it: reset it")
                self._workers[i] = self._start(i)
        return results

    def close(self) -> None:
        for _, conn in self._workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("close", None))
        for proc, conn in self._workers:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            conn.close()
        self._workers = []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_workers", None):
            self.close()

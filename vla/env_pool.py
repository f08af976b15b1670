"""`EnvPool`: LIBERO envs of one suite in spawned worker processes that never import TensorFlow (TensorFlow and
LIBERO's renderer segfault in one process). Requests go out one worker at a time (`send`) and come back as they
finish (`receive`), so a scheduler can keep every worker busy; `submit` is the blocking round on top."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from vla.gl_check import RenderConfig, check_gl, worker_gl_envs
from vla.libero_env import (
    CAMERAS,
    DUMMY_ACTION,
    NUM_STEPS_WAIT,
    TaskInfo,
    clear_soft_reset,
    list_tasks,
    make_env,
    setup_libero,
)
from vla.worker_pipes import PipeChannel, channel_pair

ObsTransform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


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
    """What a worker returns: LIBERO's observations (images upside down, see `upright`; after the pool's
    `obs_transform`, if any), the sparse reward,
    `done` (= task success), `error` (None, or the traceback of an exception raised in the worker) and `worker_s`,
    the seconds the worker spent on the request (physics + rendering; for a reset also env creation and settling)."""

    obs: dict[str, np.ndarray] = field(default_factory=dict)
    reward: float = 0.0
    done: bool = False
    error: str | None = None
    worker_s: float = 0.0


def observe(env, obs: dict) -> dict[str, np.ndarray]:
    """LIBERO's observations of `env` plus `<region>_pos` for every BDDL region site (goal targets such as
    `flat_stove_1_cook_region` that no object position gives): what the scripted expert reads."""
    out = {k: np.asarray(v) for k, v in obs.items()}
    inner = env.env
    for site in inner.object_sites_dict:
        out.setdefault(f"{site}_pos", np.array(inner.sim.data.get_site_xpos(site)))
    return out


class _WorkerEnv:
    """The env one worker owns: re-created when the task changes or after an error."""

    def __init__(self, suite: str, image_size: int, cameras: tuple[str, ...], hard_reset: bool = False,
                 obs_transform: ObsTransform | None = None):  # fmt: skip
        self.tasks = list_tasks(suite)
        self.image_size, self.cameras, self.hard_reset = image_size, cameras, hard_reset
        self.obs_transform = obs_transform
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
            bddl = self.tasks[request.task_id].bddl_file
            self.env = make_env(bddl, image_size=self.image_size, cameras=self.cameras, hard_reset=self.hard_reset)
            self.task_id = request.task_id
        if request.seed is not None:
            self.env.seed(request.seed)  # LIBERO seeds numpy's global RNG: the random placement depends on it
        # A random placement (no init state) needs LIBERO's own hard reset: a soft one places objects that rest on a
        # fixture (a bowl on the stove) from stale fixture data, up in the air. Fixed init states overwrite them all.
        hard = self.hard_reset or request.init_state is None
        self.env.env.hard_reset = hard
        obs = self.env.reset()
        if not hard:
            clear_soft_reset(self.env)
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
        out = observe(self.env, obs)
        return out if self.obs_transform is None else self.obs_transform(out)

    def handle(self, cmd: str, payload: Any) -> StepResult:
        started = time.perf_counter()
        try:
            result = self.reset(payload) if cmd == "reset" else self.step(payload)
        except Exception:
            self.ready = False
            self._discard()  # the env may be broken: the next reset builds a fresh one
            result = StepResult(error=traceback.format_exc())
        result.worker_s = time.perf_counter() - started
        return result


def _worker_main(
    conn: Connection | PipeChannel,
    suite: str,
    assets_dir: str,
    image_size: int,
    cameras: tuple[str, ...],
    hard_reset: bool,
    obs_transform: ObsTransform | None,
    gl_env: dict[str, str],
) -> None:
    """Worker loop: answer ("reset", ResetRequest) / ("step", action) with a StepResult until "close" or until the
    parent goes away (its pipe end closes -> EOFError). A failed set-up is the answer to every request."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes the pool
    os.environ.update(gl_env)  # before MuJoCo / robosuite are imported: they read the GL back-end once
    threadpool_limits(1, user_api="blas")  # one simulator, one core: BLAS threads would only contend with the others
    try:
        setup_libero(assets_dir)
        worker, setup_error = _WorkerEnv(suite, image_size, cameras, hard_reset, obs_transform), None
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
    """`num_workers` LIBERO envs of one suite, each in its own spawned process, rendering `cameras` (none: physics
    only, several times faster). `gl_envs[i]` are environment variables for worker i (the GL back-end and its EGL
    device, see `vla.gl_check.worker_gl_envs`). `hard_reset`: rebuild the model at every reset, as LIBERO does by
    default (`vla.libero_env.make_env`); the soft reset is 11x faster and places fixtures from the seed alone. A
    worker's exception comes back as `StepResult.error`; a worker that dies is restarted and its request answered
    with an error. `obs_transform`: a picklable callable each worker applies to every observation before sending it
    (e.g. `vla.libero_io.WorkerImages`: the policy's image preparation, spread over the simulator processes).
    `answer_pipe_bytes`: None, each worker answers over `multiprocessing`'s duplex Pipe (a socket pair, ~208 KB of
    send buffer); N, over a pipe of N bytes (`vla.worker_pipes`: a two-camera observation is written at once)."""

    def __init__(
        self,
        suite: str,
        num_workers: int,
        *,
        assets_dir: str | Path | None = None,
        image_size: int = 256,
        cameras: tuple[str, ...] = CAMERAS,
        gl_envs: Sequence[dict[str, str]] | None = None,
        hard_reset: bool = False,
        obs_transform: ObsTransform | None = None,
        answer_pipe_bytes: int | None = None,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if gl_envs is not None and len(gl_envs) != num_workers:
            raise ValueError(f"gl_envs has {len(gl_envs)} entries for {num_workers} workers")
        self.suite, self.cameras = suite, tuple(cameras)
        self.assets_dir = setup_libero(assets_dir)
        self.tasks = list_tasks(suite)
        self._args = (suite, str(self.assets_dir), image_size, self.cameras, hard_reset, obs_transform)
        self._gl_envs = [dict(e) for e in gl_envs] if gl_envs is not None else [{} for _ in range(num_workers)]
        self._ctx = mp.get_context("spawn")  # a forked child would inherit the parent's TensorFlow, if loaded
        self._answer_pipe_bytes = answer_pipe_bytes
        self._in_flight: set[int] = set()
        self._failed: dict[int, StepResult] = {}  # answers to requests that could not be sent
        self._workers: list[tuple[mp.process.BaseProcess, Connection | PipeChannel]] = [
            self._start(i) for i in range(num_workers)
        ]
        # While the pool runs, this host process's BLAS keeps to one thread: the simulators occupy the cores, and the
        # host's numpy work (frame encoding, policy image preparation) is small matmuls from parallel threads, where
        # OpenBLAS's own threads spin against the simulators (collection on a 16-core node ran at 69 policy steps/s,
        # the host at 1,225 % CPU; docs/PERFORMANCE.md). Restored by close().
        self._blas_limit = threadpool_limits(1, user_api="blas")

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    @property
    def in_flight(self) -> frozenset[int]:
        """Workers with a request sent and not yet received."""
        return frozenset(self._in_flight | set(self._failed))

    def task_info(self, task_id: int) -> TaskInfo:
        if not 0 <= task_id < len(self.tasks):
            raise ValueError(f"task_id {task_id} out of range: {self.suite} has {len(self.tasks)} tasks")
        return self.tasks[task_id]

    def send(self, worker: int, request: ResetRequest | np.ndarray) -> None:
        """Start one request on `worker` (a ResetRequest, or a LIBERO action (7,) to step); returns at once."""
        if not 0 <= worker < len(self._workers):
            raise ValueError(f"worker index {worker} out of range: the pool has {len(self._workers)} workers")
        if worker in self.in_flight:
            raise RuntimeError(f"worker {worker} has a request in flight: receive its result first")
        if isinstance(request, ResetRequest):
            self.task_info(request.task_id)
            message = ("reset", request)
        else:
            message = ("step", np.asarray(request, dtype=np.float64))
        try:
            self._workers[worker][1].send(message)
            self._in_flight.add(worker)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._failed[worker] = self._restart(worker)

    def receive(self, timeout: float | None = None) -> dict[int, StepResult]:
        """The results of in-flight requests that are ready, waiting up to `timeout` s (None: until at least one is)
        for the first; {} when nothing is in flight or on timeout."""
        results, self._failed = self._failed, {}
        if results or not self._in_flight:
            return results
        by_conn = {self._workers[i][1]: i for i in self._in_flight}
        for conn in wait(list(by_conn), timeout):
            i = by_conn[conn]
            self._in_flight.discard(i)
            try:
                results[i] = conn.recv()
            except (EOFError, ConnectionResetError, OSError):
                results[i] = self._restart(i)
        return results

    def submit(self, requests: dict[int, ResetRequest | np.ndarray]) -> dict[int, StepResult]:
        """Send every request (ResetRequest: reset, array: step), then wait for all of them: one parallel round."""
        for i, request in requests.items():
            self.send(i, request)
        results: dict[int, StepResult] = {}
        while len(results) < len(requests):
            results.update(self.receive())
        return results

    def reset(self, requests: dict[int, ResetRequest]) -> dict[int, StepResult]:
        """Reset each given worker (in parallel); the results hold the first observations."""
        return self.submit(requests)

    def step(self, actions: dict[int, np.ndarray]) -> dict[int, StepResult]:
        """Step each given worker with its LIBERO action (7,), in parallel."""
        return self.submit(actions)

    def _start(self, index: int) -> tuple[mp.process.BaseProcess, Connection | PipeChannel]:
        if self._answer_pipe_bytes:
            parent, child = channel_pair(self._ctx, self._answer_pipe_bytes)
        else:
            parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_worker_main, args=(child, *self._args, self._gl_envs[index]), name=f"libero-env-{index}",
            daemon=True,
        )  # fmt: skip
        proc.start()
        child.close()
        return proc, parent

    def _restart(self, index: int) -> StepResult:
        proc, conn = self._workers[index]
        proc.join(timeout=5)
        conn.close()
        self._workers[index] = self._start(index)
        return StepResult(error=f"worker {index} died (exit code {proc.exitcode}); restarted it: reset it")

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
        self._workers, self._in_flight, self._failed = [], set(), {}
        if getattr(self, "_blas_limit", None) is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_workers", None):
            self.close()


def open_pool(
    suite: str,
    num_workers: int,
    cameras: tuple[str, ...],
    render: RenderConfig,
    assets: str | Path | None,
    hard_reset: bool = False,
    obs_transform: ObsTransform | None = None,
    answer_pipe_bytes: int | None = None,
) -> EnvPool:
    """An EnvPool whose workers render `cameras` with the GL set-up of `render`, checked here first (when any camera
    is rendered) so a missing GL library is one clear error before any worker starts."""
    gl_envs = worker_gl_envs(num_workers, render)
    if cameras:
        for env in {tuple(sorted(e.items())): e for e in gl_envs}.values():
            check_gl(env)
    return EnvPool(suite, num_workers, assets_dir=assets, cameras=cameras, gl_envs=gl_envs, hard_reset=hard_reset,
                   obs_transform=obs_transform, answer_pipe_bytes=answer_pipe_bytes)  # fmt: skip

"""A stand-in for `EnvPool` with simulated latencies and no simulator, and a policy that only costs time: for
benchmarking and testing `vla.env_scheduler` without LIBERO. Workers are threads that sleep the step or reset time;
an episode ends (`done`) after a length drawn from its reset request's seed, so outcomes depend on the job alone."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from vla.env_pool import ResetRequest, StepResult
from vla.libero_env import TaskInfo
from vla.policies import Observation


def seeded_length(min_steps: int, max_steps: int) -> Callable[[ResetRequest], int]:
    """Episode length uniform in [min_steps, max_steps], drawn from the request's seed (None: 0)."""
    return lambda request: int(np.random.default_rng(request.seed or 0).integers(min_steps, max_steps + 1))


class FakePool:
    """`num_workers` fake envs with `EnvPool`'s scheduling interface (`num_workers`, `send`, `receive(timeout)`).
    A step sleeps `step_s`, a reset `reset_s`, each times 1 +- `jitter` (uniform, seeded per worker). An episode is
    done after `episode_length(request)` steps (default: `seeded_length(100, 220)`). The observation is {"t": steps so far}; a step whose action is not
    `policy_action(t)` (the action for the observation it answers) comes back as an error: actions must reach their
    own env. `events` lists (time.perf_counter(), "send" | "recv", worker, "reset" | "step") as this process sent the
    requests and received their answers."""

    def __init__(
        self,
        num_workers: int,
        step_s: float = 0.044,
        reset_s: float = 1.7,
        jitter: float = 0.1,
        episode_length: Callable[[ResetRequest], int] | None = None,
        seed: int = 0,
    ):
        self.step_s, self.reset_s, self.jitter = step_s, reset_s, jitter
        self.episode_length = episode_length or seeded_length(100, 220)
        self.events: list[tuple] = []
        self._answers: queue.Queue[tuple[int, StepResult]] = queue.Queue()
        self._requests = [queue.Queue() for _ in range(num_workers)]
        self._in_flight: dict[int, str] = {}  # worker -> the kind of its request
        self._threads = [
            threading.Thread(target=self._worker, args=(i, seed), name=f"fake-env-{i}", daemon=True)
            for i in range(num_workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def num_workers(self) -> int:
        return len(self._threads)

    def send(self, worker: int, request: ResetRequest | np.ndarray) -> None:
        if worker in self._in_flight:
            raise RuntimeError(f"worker {worker} has a request in flight: receive its result first")
        self._in_flight[worker] = "reset" if isinstance(request, ResetRequest) else "step"
        self.events.append((time.perf_counter(), "send", worker, self._in_flight[worker]))
        self._requests[worker].put(request)

    def receive(self, timeout: float | None = None) -> dict[int, StepResult]:
        """As `EnvPool.receive`: every ready result, waiting up to `timeout` s (None: forever) for the first."""
        if not self._in_flight:
            return {}
        results = {}
        try:
            worker, result = self._answers.get(timeout=timeout)
            results[worker] = result
            while True:
                worker, result = self._answers.get_nowait()
                results[worker] = result
        except queue.Empty:
            pass
        received = time.perf_counter()
        for worker in results:
            self.events.append((received, "recv", worker, self._in_flight.pop(worker)))
        return results

    def _worker(self, index: int, seed: int) -> None:
        rng = np.random.default_rng([seed, index])  # timing only: outcomes never depend on it
        t, length = 0, 0
        while (request := self._requests[index].get()) is not None:
            started = time.perf_counter()
            if isinstance(request, ResetRequest):
                time.sleep(self.reset_s * rng.uniform(1 - self.jitter, 1 + self.jitter))
                t, length = 0, self.episode_length(request)
                result = StepResult(obs={"t": np.array(t)})
            else:
                time.sleep(self.step_s * rng.uniform(1 - self.jitter, 1 + self.jitter))
                if not np.array_equal(request, policy_action(t)):
                    result = StepResult(error=f"worker {index} got action {request} for step {t}")
                else:
                    t += 1
                    result = StepResult(obs={"t": np.array(t)}, reward=float(t >= length), done=t >= length)
            result.worker_s = time.perf_counter() - started
            self._answers.put((index, result))

    def close(self) -> None:
        for requests in self._requests:
            requests.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> FakePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def policy_action(t: int) -> np.ndarray:
    """The fake policy's action for the observation {"t": t}: a function of the observation alone."""
    return np.full(7, float(t))


class LatencyPolicy:
    """A policy whose `act` sleeps `base_s + per_item_s * rows` (a GPU model's cost shape) and answers
    `policy_action(obs["t"])`, where rows is the batch, or `pad(batch)` (e.g. `vla.batch_shapes.bucket_batch`: the
    captured batch a fast decoder pads it to); `calls` records (time.perf_counter() at the call, the slots) of every
    call."""

    cameras: tuple[str, ...] = ()

    def __init__(self, base_s: float = 0.0, per_item_s: float = 0.0, gather_s: float | None = None,
                 pad: Callable[[int], int] | None = None):  # fmt: skip
        self.base_s, self.per_item_s, self.pad = base_s, per_item_s, pad
        if gather_s is not None:
            self.gather_s = gather_s  # the scheduler hint, as VLAPolicy gives it
        self.last_frames: dict[int, np.ndarray] = {}
        self.calls: list[tuple[float, list[int]]] = []

    def reset(self, slot: int, task: TaskInfo) -> None:
        pass

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]:
        self.calls.append((time.perf_counter(), sorted(observations)))
        rows = self.pad(len(observations)) if self.pad else len(observations)
        time.sleep(self.base_s + self.per_item_s * rows)
        return {slot: policy_action(int(obs["t"])) for slot, obs in observations.items()}

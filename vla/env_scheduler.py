"""The one env-pool scheduler of evaluation and demo collection: episodes run asynchronously per worker. A worker
that finishes an episode is reset onto the next job while the others keep stepping; every env waiting for an action
goes into ONE batched `policy.act` call, and each action is sent the moment it is known, so workers simulate while
the policy computes. Optionally (`gather_s`) the scheduler first waits a little for the other stepping envs, so an
expensive policy makes fewer, larger calls. Per-episode outcomes depend only on the job and the policy, never on
which worker ran it or when."""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla.env_pool import EnvPool, ResetRequest, StepResult
from vla.libero_env import TaskInfo
from vla.policies import Observation, Policy

log = logging.getLogger(__name__)
PROGRESS_LOG_S = 60.0  # default period of the "so far" timing line


@dataclass(frozen=True)
class Job:
    """One episode to run: the task, how its worker is reset, and the caller's key (eval: the episode index)."""

    task: TaskInfo
    request: ResetRequest
    key: Any = None


@dataclass
class Episode:
    """A running episode: `obs` is the latest observation, `steps` the actions sent, `data` the caller's own."""

    job: Job
    slot: int
    started: float
    obs: Observation = field(default_factory=dict)
    steps: int = 0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """How an episode ended: status success (LIBERO's `done`) | failure (step limit) | error (with its traceback)."""

    episode: Episode
    status: str
    error: str | None = None


@dataclass
class Timing:
    """Where a run's time went. Main process: wall, policy (reset + act; `policy_parts`: the parts of it a policy
    times itself, e.g. the VLA's host image preparation and its model call), blocked waiting for workers, and the
    rest (pipes, pickling, bookkeeping, callbacks). Workers (summed over workers, measured inside them): env steps
    (physics + rendering) and resets (env creation, placement, settle steps)."""

    wall_s: float = 0.0
    policy_s: float = 0.0
    wait_s: float = 0.0
    env_step_s: float = 0.0
    env_reset_s: float = 0.0
    policy_calls: int = 0
    steps: int = 0
    resets: int = 0
    num_workers: int = 0
    policy_parts: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        other = self.wall_s - self.policy_s - self.wait_s
        busy = (self.env_step_s + self.env_reset_s) / (self.wall_s * self.num_workers) if self.wall_s else None
        return {
            "wall_s": round(self.wall_s, 3), "policy_s": round(self.policy_s, 3), "wait_s": round(self.wait_s, 3),
            "ipc_and_bookkeeping_s": round(other, 3), "env_step_s": round(self.env_step_s, 3),
            "env_reset_s": round(self.env_reset_s, 3), "policy_calls": self.policy_calls, "steps": self.steps,
            "resets": self.resets, "num_workers": self.num_workers,
            "mean_batch": round(self.steps / self.policy_calls, 2) if self.policy_calls else None,
            "steps_per_s": round(self.steps / self.wall_s, 2) if self.wall_s else None,
            "worker_busy": round(busy, 3) if busy is not None else None,
            "policy_parts": {name: round(s, 3) for name, s in self.policy_parts.items()},
        }  # fmt: skip

    def line(self) -> str:
        d = self.as_dict()
        parts = "".join(f"; {name.removesuffix('_s')} {s:.1f} s" for name, s in self.policy_parts.items())
        return (
            f"timing: {d['steps']} steps in {d['wall_s']:.1f} s ({d['steps_per_s']} steps/s) | main: policy "
            f"{d['policy_s']:.1f} s over {d['policy_calls']} calls (mean batch {d['mean_batch']}{parts}), waiting "
            f"{d['wait_s']:.1f} s, ipc+other {d['ipc_and_bookkeeping_s']:.1f} s | workers: steps {d['env_step_s']:.1f}"
            f" s, resets {d['env_reset_s']:.1f} s ({d['resets']}), busy {d['worker_busy']}"
        )


# Called with each episode and the policy's action; returns the action to execute (demos add noise, eval records
# video frames). Runs between the policy call and the send.
ActionHook = Callable[[Episode, np.ndarray], np.ndarray]


class Scheduler:
    """Runs `jobs` on `pool` with `policy`, each episode until `done` or `max_steps` actions. `run` yields every
    Outcome as it happens; `timing` accumulates over runs. A policy exception ends the episodes of that batch as
    errors, an env exception its own episode; the run goes on. Every `log_every_s` (default `PROGRESS_LOG_S`) the
    timing so far is logged, so a run stopped from outside (a job's time limit) still says where its time went.

    gather_s: 0 acts greedily, on whatever observations have arrived (right for a cheap policy). > 0: once an
    observation waits, keep receiving until every env with a STEP in flight has answered, or until `gather_s` seconds
    have passed since that first observation, then act on all of them in one call (for a policy whose call has a
    large fixed cost). Resetting envs are never waited for: a reset takes seconds. Gathering counts as `wait_s`."""

    def __init__(
        self,
        pool: EnvPool,
        policy: Policy,
        max_steps: int,
        on_action: ActionHook | None = None,
        log_every_s: float | None = None,
        gather_s: float = 0.0,
    ):
        if gather_s < 0:
            raise ValueError(f"gather_s must be >= 0 (seconds; 0 = act greedily), got {gather_s}")
        self.pool, self.policy, self.max_steps, self.on_action = pool, policy, max_steps, on_action
        self.log_every_s = PROGRESS_LOG_S if log_every_s is None else log_every_s
        self.gather_s = gather_s
        self.timing = Timing(num_workers=pool.num_workers)

    def run(self, jobs: Iterable[Job]) -> Iterator[Outcome]:
        started = time.perf_counter()
        queue, free = deque(jobs), deque(range(self.pool.num_workers))
        busy: dict[int, Episode] = {}  # a request in flight
        waiting: dict[int, Episode] = {}  # an observation, no action yet
        since: float | None = None  # when the first of `waiting` arrived (gathering)
        logged = started
        try:
            while queue or busy or waiting:
                now = time.perf_counter()
                if now - logged >= self.log_every_s:
                    logged = now
                    so_far = dataclasses.replace(self.timing, wall_s=self.timing.wall_s + now - started)
                    log.info("so far, %s", so_far.line())
                while free and queue:
                    outcome = self._start(free.popleft(), queue.popleft(), busy)
                    if outcome is not None:
                        free.appendleft(outcome.episode.slot)
                        yield outcome
                if waiting and self._gathered(busy, since):
                    for outcome in self._act(waiting, busy):
                        free.append(outcome.episode.slot)
                        yield outcome
                    waiting, since = {}, None
                    continue  # freed workers take new jobs before this process blocks on the pipes
                if not busy:
                    continue
                t0 = time.perf_counter()
                if waiting:  # gathering: wait at most until gather_s after the first observation
                    results = self.pool.receive(timeout=max(0.0, since + self.gather_s - t0))
                else:
                    results = self.pool.receive()
                received = time.perf_counter()
                self.timing.wait_s += received - t0
                for slot, result in results.items():
                    outcome = self._collect(busy.pop(slot), result, waiting)
                    if outcome is not None:
                        free.append(slot)
                        yield outcome
                if waiting and since is None:
                    since = received
        finally:
            self.timing.wall_s += time.perf_counter() - started

    def _gathered(self, busy: dict[int, Episode], since: float | None) -> bool:
        """Whether to act on the waiting envs now: greedy, or no stepping env is still out (an env with `steps == 0`
        is resetting), or `gather_s` has passed since the first waiting observation."""
        if self.gather_s == 0 or not any(episode.steps for episode in busy.values()):
            return True
        return since is None or time.perf_counter() - since >= self.gather_s

    def _start(self, slot: int, job: Job, busy: dict[int, Episode]) -> Outcome | None:
        episode = Episode(job, slot, time.perf_counter())
        t0 = time.perf_counter()
        try:
            self.policy.reset(slot, job.task)
        except Exception:
            return Outcome(episode, "error", traceback.format_exc())
        finally:
            self.timing.policy_s += time.perf_counter() - t0
        self.pool.send(slot, job.request)
        busy[slot] = episode
        return None

    def _act(self, waiting: dict[int, Episode], busy: dict[int, Episode]) -> list[Outcome]:
        """One batched policy call for every waiting env; each action goes out as soon as it is ready."""
        t0 = time.perf_counter()
        parts = dict(getattr(self.policy, "timing", {}))  # the policy's own cumulative timers, before the call
        try:
            actions = self.policy.act(
                {s: ep.obs for s, ep in waiting.items()}, {s: ep.job.task.language for s, ep in waiting.items()}
            )
            if set(actions) != set(waiting):
                raise RuntimeError(f"policy answered slots {sorted(actions)}, expected {sorted(waiting)}")
        except Exception:
            trace = traceback.format_exc()  # one batched call: every episode in it shares the failure
            return [Outcome(ep, "error", trace) for ep in waiting.values()]
        finally:
            self.timing.policy_s += time.perf_counter() - t0
            self.timing.policy_calls += 1
            for name, total in getattr(self.policy, "timing", {}).items():
                self.timing.policy_parts[name] = self.timing.policy_parts.get(name, 0.0) + total - parts.get(name, 0.0)
        outcomes = []
        for slot, episode in waiting.items():
            action = actions[slot]
            try:
                if self.on_action is not None:
                    action = self.on_action(episode, action)
            except Exception:
                outcomes.append(Outcome(episode, "error", traceback.format_exc()))
                continue
            self.pool.send(slot, action)
            episode.steps += 1
            busy[slot] = episode
        self.timing.steps += len(waiting) - len(outcomes)
        return outcomes

    def _collect(self, episode: Episode, result: StepResult, waiting: dict[int, Episode]) -> Outcome | None:
        """Book one worker's answer: a reset's first observation (its `done` during the settle steps is ignored, as
        in OpenVLA's eval) or a step's result; returns the Outcome when the episode ended."""
        first = episode.steps == 0
        if first:
            self.timing.env_reset_s += result.worker_s
            self.timing.resets += 1
        else:
            self.timing.env_step_s += result.worker_s
        if result.error is not None:
            return Outcome(episode, "error", result.error)
        if not first and result.done:
            return Outcome(episode, "success")
        if episode.steps >= self.max_steps:
            return Outcome(episode, "failure")
        episode.obs = result.obs
        waiting[episode.slot] = episode
        return None

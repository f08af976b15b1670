"""Simulation throughput: raw env steps/s of N workers x rendered cameras (random actions, every worker stepping on
its own), and the harness rate (the scripted expert through `vla.env_scheduler`, resets included) on the same pool,
with its ratio to the raw rate of that run. The harness runs the evaluation protocol's episodes (`--jobs protocol`:
the suite's fixed initial states, task after task, as `eval.py` plans them, so resets are soft unless `--resets
hard`) and/or demo collection's (`--jobs random`: random placements, the tasks in turn, each reset a LIBERO rebuild;
before 2026-12-07 the only harness, so older tables' ratios include a rebuild per episode).

    python scripts/bench_sim.py --workers 1,4,8,16 --seconds 20            # on the GPU machine
    python scripts/bench_sim.py --workers 1,2 --seconds 3 --cameras none   # a CPU smoke run
    python scripts/bench_sim.py --workers 16 --cameras both --resets soft,hard  # soft vs LIBERO's hard resets
    python scripts/bench_sim.py --workers 16 --cameras both --channels socket,pipes  # how workers answer
    python scripts/bench_sim.py --workers 16 --cameras agentview --jobs protocol,random  # eval's vs collection's
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterator

import numpy as np

from vla.env_pool import EnvPool, ResetRequest, open_pool
from vla.env_scheduler import Job, Scheduler
from vla.evaluation import EvalConfig, plan_jobs
from vla.gl_check import RenderConfig
from vla.libero_env import CAMERAS, SUITE_MAX_STEPS
from vla.policies import ExpertPolicy
from vla.runtime import configure_logging
from vla.worker_pipes import PIPE_BYTES

CAMERA_SETS = {"both": CAMERAS, "agentview": ("agentview",), "none": ()}
CHANNELS = {"socket": None, "pipes": PIPE_BYTES}  # EnvPool's answer_pipe_bytes (vla.worker_pipes)


def raw_rate(pool: EnvPool, seconds: float, seed: int = 0, stop: Callable[[], bool] | None = None,
             reset: bool = True) -> float:  # fmt: skip
    """Env steps/s with uniform random actions; each worker gets its next action as soon as its step returns. Runs
    `seconds` after the resets (reset=False: none, the envs go on from where they are), or until `stop()` is true."""
    rng = np.random.default_rng(seed)
    if reset:
        pool.submit({w: ResetRequest(w % len(pool.tasks), seed=w) for w in range(pool.num_workers)})
    for w in range(pool.num_workers):
        pool.send(w, rng.uniform(-1, 1, 7))
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds and not (stop and stop()):
        for w, result in pool.receive().items():
            steps += 1
            pool.send(w, ResetRequest(w % len(pool.tasks), seed=steps) if result.error else rng.uniform(-1, 1, 7))
    elapsed = time.perf_counter() - started
    while pool.in_flight:
        pool.receive()
    return steps / elapsed


def protocol_jobs(suite: str) -> list[Job]:
    """The evaluation protocol's 500 episodes as `eval.py` plans and orders them (each task's 50 fixed initial states,
    env seed 0, task after task)."""
    return plan_jobs(EvalConfig(task_suite=suite, policy="expert"), [])[1]


def random_jobs(pool: EnvPool) -> Iterator[Job]:
    """Demo collection's episodes: random placements (seeded by the episode's number), the tasks in turn."""
    for i in itertools.count():
        yield Job(pool.tasks[i % len(pool.tasks)], ResetRequest(i % len(pool.tasks), seed=i))


def harness_rate(pool: EnvPool, suite: str, seconds: float, jobs: str) -> tuple[float, float | None]:
    """Policy steps/s of the scripted expert through the scheduler over `jobs` (protocol | random), and the workers'
    busy share."""
    episodes = protocol_jobs(suite) if jobs == "protocol" else list(itertools.islice(random_jobs(pool), 10_000))
    scheduler = Scheduler(pool, ExpertPolicy(), SUITE_MAX_STEPS[suite])
    started, run = time.perf_counter(), scheduler.run(episodes)
    for _ in run:
        if time.perf_counter() - started > seconds:
            break
    run.close()
    while pool.in_flight:
        pool.receive()
    timing = scheduler.timing.as_dict()
    return timing["steps_per_s"] or 0.0, timing["worker_busy"]


def main(args: argparse.Namespace) -> list[dict]:
    rows = []
    print(f"{'workers':>7} {'cameras':>9} {'reset':>5} {'channel':>7} {'raw steps/s':>11} {'jobs':>8} {'harness':>8} "
          f"{'ratio':>6} {'busy':>5}")  # fmt: skip
    for workers, name, reset, channel in itertools.product(args.workers, args.cameras, args.resets, args.channels):
        render = RenderConfig(gl=args.gl, egl_devices=args.egl_devices)
        hard = reset == "hard"
        with open_pool(args.task_suite, workers, CAMERA_SETS[name], render, args.libero_assets, hard,
                       answer_pipe_bytes=CHANNELS[channel]) as pool:  # fmt: skip
            raw = raw_rate(pool, args.seconds)
            harnesses = {jobs: harness_rate(pool, args.task_suite, args.seconds, jobs) for jobs in args.jobs}
        for jobs, (harness, busy) in (harnesses or {"-": (None, None)}).items():
            ratio = f"{harness / raw:6.2f}" if harness else f"{'-':>6}"
            print(
                f"{workers:>7} {name:>9} {reset:>5} {channel:>7} {raw:>11.1f} {jobs:>8} {harness or 0:>8.1f} {ratio} "
                f"{busy if busy is not None else '-':>5}"
            )
            rows.append({"workers": workers, "cameras": name, "reset": reset, "channel": channel, "raw": raw,
                         "jobs": jobs, "harness": harness, "busy": busy})  # fmt: skip
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(t) for t in s.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=ints, default=[1, 4, 8, 16], help="worker counts, e.g. 1,4,16")
    parser.add_argument("--cameras", type=lambda s: s.split(","), default=list(CAMERA_SETS), help="both,agentview,none")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per rate (after the resets)")
    parser.add_argument("--resets", type=lambda s: s.split(","), default=["soft"], help="soft,hard (LIBERO's default)")
    parser.add_argument("--channels", type=lambda s: s.split(","), default=["socket"], help="socket,pipes")
    parser.add_argument("--task_suite", default="libero_spatial")
    parser.add_argument("--harness", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                        help="false: raw rates only (as --jobs '')")  # fmt: skip
    parser.add_argument("--jobs", type=lambda s: [j for j in s.split(",") if j], default=["protocol"],
                        help="the harness's episodes, each timed on the same pool: protocol (eval.py's fixed states), "
                             "random (collection's placements); empty: raw rates only")  # fmt: skip
    parser.add_argument("--gl", choices=("egl", "osmesa"), default=None)
    parser.add_argument("--egl_devices", type=ints, default=None, help="default: the visible GPUs")
    parser.add_argument("--libero_assets", default=None)
    args = parser.parse_args(argv)
    bad = [c for c in args.cameras if c not in CAMERA_SETS]
    if bad:
        parser.error(f"unknown camera sets {bad}: choose from {list(CAMERA_SETS)}")
    if set(args.resets) - {"soft", "hard"}:
        parser.error(f"unknown resets {args.resets}: choose from soft,hard")
    args.jobs = args.jobs if args.harness else []
    if set(args.jobs) - {"protocol", "random"}:
        parser.error(f"unknown jobs {args.jobs}: choose from protocol,random")
    if set(args.channels) - set(CHANNELS):
        parser.error(f"unknown channels {args.channels}: choose from {','.join(CHANNELS)}")
    return args


if __name__ == "__main__":
    configure_logging()
    main(parse_args())

"""What the simulation costs the policy's calls: `predict_actions` latency (fast + compiled decoding, random weights)
while N LIBERO workers step beside it, against the same calls on an idle machine, same process.

The twenty-eighth session found eval.py's 7B calls 19 % slower than bench_inference.py's at the same batch (210 vs
175.7 ms at batch 16, H100). Each action is one CUDA graph, so host launches are few; what differs is the load: 16
simulator processes on 16 cores (CPU: the host thread waits for a core) that render with EGL on the same GPU
(time-slicing between contexts). The loads tell them apart: `none` steps physics only, `agentview` also renders
eval's camera, each with the workers at niceness 0 or higher (the policy's thread first). Answer (H100, docs/
PERFORMANCE.md, twenty-ninth session): the renders, ~1.6 ms of the policy's time each; the cores cost it nothing.

    python scripts/bench_contention.py --tokenizer DIR --batch 16 --loads idle,none,agentview --nice 0,10
    python scripts/bench_contention.py --tokenizer DIR --batch 16 --loads idle,agentview --nice 0 --egl_devices 1
    python scripts/bench_contention.py --tokenizer DIR --preset tiny --device cpu --workers 1 --seconds 1  # smoke

Prints one row per (load, niceness, batch): calls, median and mean ms a call, the ratio to the idle median, and the
load's own env steps/s (random actions, every worker stepping on its own, as bench_sim's raw rate).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Iterator

import numpy as np
from bench_sim import CAMERA_SETS, raw_rate

from vla.env_pool import open_pool
from vla.gl_check import RenderConfig

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


def _load(
    suite: str, assets: str | None, render: RenderConfig, workers: int, cameras: str, nice: int, ready, stop, rates
) -> None:
    """The simulation load (a spawned process): `workers` envs stepping random actions until `stop`, rendering with
    `render` (a `RenderConfig`); the workers inherit this process's niceness."""
    os.nice(nice)
    with open_pool(suite, workers, CAMERA_SETS[cameras], render, assets) as pool:
        raw_rate(pool, 1.0)  # every env created, reset and stepping before the calls are timed
        ready.set()
        rates.put(raw_rate(pool, float("inf"), stop=stop.is_set, reset=False))


def time_calls(vla, batch: int, seconds: float) -> list[float]:
    """Seconds of each `predict_actions` call on `batch` random frames, for `seconds`."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch)]
    calls, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = time.perf_counter()
        vla.predict_actions(frames, [INSTRUCTION] * batch)
        calls.append(time.perf_counter() - start)
    return calls


def build(args: argparse.Namespace):
    """The random-weight VLA, decoding as eval.py does on CUDA. Its modules are imported here, not at the top: the
    spawned load and each of its workers import this file and need none of them."""
    import torch

    from vla.checkpoint import load_tokenizer
    from vla.model import VLAConfig, build_vla
    from vla.normalization import compute_action_stats

    torch.manual_seed(0)
    stats = {"bench": {"action": compute_action_stats(np.random.default_rng(0).uniform(-1, 1, (100, 7)))}}
    vla = build_vla(VLAConfig.preset(args.preset), load_tokenizer(args.tokenizer), norm_stats=stats,
                    device=args.device, dtype=torch.bfloat16 if args.device == "cuda" else torch.float32).eval()  # fmt: skip
    if args.device == "cuda":
        vla.enable_fast_decoding(compile=True)
        vla.warm_up_decoding([INSTRUCTION], max(args.batch))
    return vla


@contextlib.contextmanager
def simulation(args: argparse.Namespace, load: str, nice: int) -> Iterator[dict]:
    """`load` running in a spawned process while the block runs (idle: nothing); the dict gets its env steps/s."""
    result = {"steps_per_s": None}
    if load == "idle":
        yield result
        return
    ctx = mp.get_context("spawn")
    ready, stop, rates = ctx.Event(), ctx.Event(), ctx.Queue()
    render = RenderConfig(egl_devices=args.egl_devices)
    load_args = (args.task_suite, args.libero_assets, render, args.workers, load, nice, ready, stop, rates)
    process = ctx.Process(target=_load, args=load_args, name=f"load-{load}")
    process.start()
    try:
        if not ready.wait(args.start_timeout):
            raise SystemExit(f"the {load} load's {args.workers} workers did not start in {args.start_timeout} s")
        yield result
        stop.set()
        result["steps_per_s"] = rates.get(timeout=60)
        process.join(60)
    finally:
        if process.is_alive():
            process.kill()


def main(args: argparse.Namespace) -> list[dict]:
    vla = build(args)
    for batch in args.batch:
        time_calls(vla, batch, 1.0)  # graphs captured, caches warm
    rows, idle = [], {}
    print(f"{'load':>9} {'nice':>4} {'batch':>5} {'calls':>5} {'median ms':>9} {'mean ms':>8} {'vs idle':>7} "
          f"{'sim steps/s':>11}")  # fmt: skip
    for load in args.loads:
        for nice in [0] if load == "idle" else args.nice:
            with simulation(args, load, nice) as sim:
                timed = {batch: time_calls(vla, batch, args.seconds) for batch in args.batch}
            for batch, calls in timed.items():
                median, rate = statistics.median(calls), sim["steps_per_s"]
                if load == "idle":
                    idle[batch] = median
                row = {"load": load, "nice": nice, "batch": batch, "calls": len(calls), "median_ms": 1000 * median,
                       "mean_ms": 1000 * statistics.fmean(calls), "vs_idle": median / idle[batch],
                       "sim_steps_per_s": rate}  # fmt: skip
                rows.append(row)
                print(f"{load:>9} {nice:>4} {batch:>5} {len(calls):>5} {row['median_ms']:>9.1f} {row['mean_ms']:>8.1f} "
                      f"{row['vs_idle']:>6.2f}x {f'{rate:.1f}' if rate else '-':>11}", flush=True)  # fmt: skip
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="directory with Llama-2's tokenizer.model")
    parser.add_argument("--preset", default="full", choices=["full", "small", "tiny"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: plain decoding (smoke runs)")
    parser.add_argument("--batch", type=lambda s: [int(t) for t in s.split(",")], default=[16], help="e.g. 8,16")
    parser.add_argument("--loads", type=lambda s: s.split(","), default=["idle", "none", "agentview"],
                        help="idle, or a bench_sim camera set the workers render (none: physics only)")  # fmt: skip
    parser.add_argument("--nice", type=lambda s: [int(t) for t in s.split(",")], default=[0, 10],
                        help="the load workers' niceness, each timed (0: as eval.py's workers)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per (load, niceness, batch)")
    parser.add_argument("--start_timeout", type=float, default=300.0)
    parser.add_argument("--task_suite", default="libero_spatial")
    parser.add_argument("--libero_assets", default=None)
    parser.add_argument("--egl_devices", type=lambda s: [int(t) for t in s.split(",")], default=None,
                        help="EGL devices the load renders on (default: the visible GPUs; on a node with two, 1 "
                             "shows what rendering beside the policy's GPU 0 leaves of the cost)")  # fmt: skip
    args = parser.parse_args(argv)
    bad = [load for load in args.loads if load != "idle" and load not in CAMERA_SETS]
    if bad:
        parser.error(f"unknown loads {bad}: choose idle or a camera set of {list(CAMERA_SETS)}")
    if args.loads[0] != "idle":
        parser.error("the first load must be idle: the other rows' ratios are taken against it")
    if min(args.nice) < 0:
        parser.error("--nice must be >= 0 (raising priority needs privileges)")
    return args


if __name__ == "__main__":
    from vla.runtime import configure_logging

    configure_logging()
    main(parse_args())

"""Greedy vs gathered batching in `vla.env_scheduler`, without LIBERO: the real `Scheduler` on `vla.fake_pool`'s
simulated workers (sleeping the step and reset times of 16 LIBERO workers on the H200 node) with policies that only
cost time, `a + b * batch` ms per call (`--pad captured`: b times the batch the fast decoder pads it to,
`vla.batch_shapes.bucket_batch`). Prints policy steps/s, mean batch and policy calls per latency profile.

    python scripts/bench_scheduler.py                                   # the profiles, 16 workers
    python scripts/bench_scheduler.py --profiles 7b --episodes 64 --time_scale 1
    python scripts/bench_scheduler.py --profiles 7b_h100 --pad captured,none --gather_s 0 --workers 32 \
        --episodes 64 --min_len 220 --reset_ms 150   # random weights: every episode to the limit; soft resets
"""

from __future__ import annotations

import argparse
import itertools
import time

from vla.batch_shapes import bucket_batch
from vla.env_pool import ResetRequest
from vla.env_scheduler import Job, Scheduler
from vla.fake_pool import FakePool, LatencyPolicy, seeded_length
from vla.libero_env import TaskInfo

PADS = {"none": None, "captured": bucket_batch}  # the rows a call costs: its batch, or the captured batch it pads to
# name -> (fixed ms per call, ms per batch item): measured or estimated costs of one `policy.act`
PROFILES = {
    "expert": ("expert", 0.1, 0.0),  # the scripted expert: instant
    "small": ("small VLA", 4.0, 0.5),
    "7b": ("7B H200", 32.0, 7.6),  # compiled fast decoding of the 7B: 25.6 Hz at batch 1, 86 actions/s at batch 8
    "7b_h100": ("7B H100", 40.8, 8.43),  # the same on an H100, 2026-12-07: 49.2 ms at batch 1, 175.7 at batch 16
    # + the main process's per-frame preprocessing (libero_image: 180° turn, JPEG round trip, lanczos resize, crop):
    # 10-12 ms a frame measured on the 2-core CPU machine (docs/PERFORMANCE.md)
    "7b_host": ("7B H200 + host prep", 32.0, 7.6 + 10.0),
}


def run_once(args: argparse.Namespace, base_ms: float, per_item_ms: float, gather_s: float, pad: str) -> dict:
    """One scheduler run of `args.episodes` episodes; rates are in unscaled (real-latency) time."""
    scale = args.time_scale
    jobs = [Job(TaskInfo(0, "fake", "do the fake task", "none"), ResetRequest(0, seed=args.seed + i), key=i)
            for i in range(args.episodes)]  # fmt: skip
    policy = LatencyPolicy(base_ms * scale / 1e3, per_item_ms * scale / 1e3, pad=PADS[pad])
    with FakePool(
        args.workers, args.step_ms * scale / 1e3, args.reset_ms * scale / 1e3, args.jitter,
        seeded_length(args.min_len, args.max_len), seed=args.seed,
    ) as pool:  # fmt: skip
        scheduler = Scheduler(pool, policy, args.max_len, gather_s=gather_s * scale)
        started = time.perf_counter()
        outcomes = list(scheduler.run(jobs))
        wall = (time.perf_counter() - started) / scale
    bad = [o for o in outcomes if o.status != "success"]
    if bad:
        raise RuntimeError(f"{len(bad)} fake episodes did not succeed, e.g. {bad[0].status}: {bad[0].error}")
    timing = scheduler.timing
    return {"steps_per_s": timing.steps / wall, "mean_batch": timing.steps / timing.policy_calls,
            "calls": timing.policy_calls, "wall_s": wall, "steps": timing.steps}  # fmt: skip


def main(args: argparse.Namespace) -> list[dict]:
    header = (f"| profile (a + b·rows ms) | rows | greedy steps/s | gather steps/s | gather/greedy | greedy mean batch | "
              f"gather mean batch | greedy calls | gather calls |\n|{'---|' * 9}")  # fmt: skip
    print(f"{args.workers} workers, {args.episodes} episodes of {args.min_len}-{args.max_len} steps, step "
          f"{args.step_ms} ms, reset {args.reset_ms} ms (+-{args.jitter:.0%}), gather_s {args.gather_s}, "
          f"time scale {args.time_scale}\n\n{header}")  # fmt: skip
    rows = []
    for key, pad in itertools.product(args.profiles, args.pad):
        name, base_ms, per_item_ms = PROFILES[key]
        greedy = run_once(args, base_ms, per_item_ms, 0.0, pad)
        gather = run_once(args, base_ms, per_item_ms, args.gather_s, pad) if args.gather_s else None
        ratio = gather["steps_per_s"] / greedy["steps_per_s"] if gather else None
        cells = (f"{gather['steps_per_s']:.1f} | {ratio:.2f} | {greedy['mean_batch']:.2f} | {gather['mean_batch']:.2f} | "
                 f"{greedy['calls']} | {gather['calls']}" if gather else
                 f"- | - | {greedy['mean_batch']:.2f} | - | {greedy['calls']} | -")  # fmt: skip
        rows_label = "batch" if pad == "none" else "captured batch"
        print(f"| {name} ({base_ms:g} + {per_item_ms:g}) | {rows_label} | {greedy['steps_per_s']:.1f} | {cells} |",
              flush=True)  # fmt: skip
        rows.append({"profile": key, "pad": pad, "greedy": greedy, "gather": gather, "ratio": ratio})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--profiles", type=lambda s: s.split(","), default=list(PROFILES), help="comma-separated: " + ",".join(PROFILES)
    )
    parser.add_argument("--workers", type=int, default=16, help="simulated env workers")
    parser.add_argument("--episodes", type=int, default=32, help="episodes per run (each profile runs twice)")
    parser.add_argument("--step_ms", type=float, default=44.0, help="one env step (16 workers on the node: 44 ms)")
    parser.add_argument("--reset_ms", type=float, default=1700.0, help="one reset (LIBERO rebuilds its model: 1.7 s)")
    parser.add_argument("--jitter", type=float, default=0.1, help="relative +- spread of step and reset times")
    parser.add_argument("--min_len", type=int, default=100, help="shortest episode, steps")
    parser.add_argument("--max_len", type=int, default=220, help="longest episode, steps (libero_spatial's limit)")
    parser.add_argument("--gather_s", type=float, default=0.5, help="the gather column's gather_s (0: no column)")
    parser.add_argument("--pad", type=lambda s: s.split(","), default=["none"],
                        help="what a call costs per row: none (its batch), captured (the batch padded to a captured "
                             "one), or both: none,captured")  # fmt: skip
    parser.add_argument("--time_scale", type=float, default=0.125, help="every latency times this (rates unscaled)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    bad = [p for p in args.profiles if p not in PROFILES]
    if bad:
        parser.error(f"unknown profiles {bad}: choose from {list(PROFILES)}")
    if set(args.pad) - set(PADS):
        parser.error(f"unknown --pad {args.pad}: choose from {','.join(PADS)}")
    if args.time_scale <= 0 or args.min_len < 1 or args.max_len < args.min_len:
        parser.error("need --time_scale > 0 and 1 <= --min_len <= --max_len")
    return args


if __name__ == "__main__":
    main(parse_args())

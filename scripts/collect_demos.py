"""Collect scripted-expert LIBERO demonstrations as a dataset `<out>/<suite>_no_noops/` (RLDS, or a TF-free frame
store with --format frames), recorded as OpenVLA's regenerated data: 256² images rotated 180°, state, joint state,
actions, no-op steps dropped, failed episodes dropped. Initial states come from LIBERO's random placement, never the
fixed eval states. --action_noise S executes the expert's action plus N(0, S²) noise on the xyz deltas (--noise_dims
xyzrpy: the rotation deltas too) and records the clean action (DART-style recovery data). --miss_height H: every pick
first misses (closes H above the grasp point), carries the empty grip, then recovers; only the recovery is recorded
(vla.expert_rehearsal); --miss_fraction F: only that share of the episodes does, the rest are honest picks.
--learner_checkpoint C: a trained VLA drives each episode's first N steps (N drawn in [--learner_min_steps,
--learner_max_steps]), unrecorded, and the expert takes over from the state it left, recorded: recoveries from the
learner's own mistakes (vla.takeover); --learner_fraction F: only that share of the episodes has a learner part.

    python scripts/collect_demos.py --task_suite libero_spatial --episodes_per_task 50 --out data/demos --num_workers 2
    python scripts/collect_demos.py --task_suite libero_spatial --episodes_per_task 2 --out /tmp/demos --tasks 0,1
    python scripts/collect_demos.py --episodes_per_task 50 --out data/noisy --action_noise 0.1 --format frames
    python scripts/collect_demos.py --tasks 4 --episodes_per_task 50 --out data/miss --miss_height 0.12 --max_steps 320
    python scripts/collect_demos.py --episodes_per_task 80 --out data/mixed --miss_height 0.12 --miss_fraction 0.3
    python scripts/collect_demos.py --episodes_per_task 80 --out data/takeover --format frames --max_steps 340 \
        --learner_checkpoint checkpoints/small-libero-spatial --learner_min_steps 20 --learner_max_steps 120
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vla.cli import truthy
from vla.demos import SUMMARY_FILE, CollectConfig, collect
from vla.runtime import configure_logging


def main(cfg: CollectConfig) -> dict[str, Any]:
    """Collect, write the dataset and its summary, print the per-task table; returns the summary."""
    summary = collect(cfg)
    rows, dataset = summary["tasks"], summary["dataset"]
    print(summary["timing_line"])
    print(f"{'task':>4} {'success':>9} {'rate':>6} {'steps':>6} {'kept':>6}  instruction")
    for r in rows:
        print(f"{r['task_id']:>4} {r['successes']:>4}/{r['attempts']:<4} {r['success_rate']:>6.0%} "
              f"{r['mean_steps'] or 0:>6.0f} {r['mean_kept_steps'] or 0:>6.0f}  {r['task']}")  # fmt: skip
    print(f"dataset: {dataset} ({summary['format']})\nsummary: {Path(cfg.out) / SUMMARY_FILE}")
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
    parser.add_argument("--action_noise", type=float, default=d.action_noise, help="noise std, e.g. 0.1")
    parser.add_argument("--noise_dims", choices=("xyz", "xyzrpy"), default=d.noise_dims, help="the deltas noised")
    parser.add_argument("--format", choices=("rlds", "frames"), default=d.format, help="default: rlds if TF imports")
    parser.add_argument("--gl", choices=("egl", "osmesa"), default=d.gl, help="default: $MUJOCO_GL, else egl")
    int_list = lambda s: [int(t) for t in s.split(",")]  # noqa: E731
    parser.add_argument("--egl_devices", type=int_list, default=d.egl_devices, help="e.g. 0,1 (default: visible GPUs)")
    parser.add_argument("--hard_reset", type=truthy, default=d.hard_reset, help="rebuild the sim at every reset")
    miss = "> 0: every pick first closes this far (m) above the grasp point (0.12: 7-12 cm, a sure miss)"
    parser.add_argument("--miss_height", type=float, default=d.miss_height, help=miss)
    carry = "the rehearsed miss carries its empty grip up to this many steps, then recovers (only that is recorded)"
    parser.add_argument("--miss_steps", type=int, default=d.miss_steps, help=carry)
    share = "with --miss_height: the share of episodes that rehearse a miss (drawn per episode); the rest pick honestly"
    parser.add_argument("--miss_fraction", type=float, default=d.miss_fraction, help=share)
    parser.add_argument(
        "--learner_checkpoint",
        default=d.learner_checkpoint,
        help="a VLA checkpoint that drives each episode's first steps, unrecorded; then the expert",
    )
    parser.add_argument("--learner_min_steps", type=int, default=d.learner_min_steps, help="its steps: at least")
    parser.add_argument("--learner_max_steps", type=int, default=d.learner_max_steps, help="... and at most")
    learned = "with --learner_checkpoint: the share of episodes with a learner part; the rest are ordinary demos"
    parser.add_argument("--learner_fraction", type=float, default=d.learner_fraction, help=learned)
    return CollectConfig(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    configure_logging()
    main(parse_args())

"""Frames for the decoding guard on a trained checkpoint (tests/test_fast_paths.py::
test_fast_decoding_agrees_on_a_trained_checkpoint, $VLA_GUARD_FRAMES): the scripted expert's libero_spatial episodes
on the benchmark's fixed initial states (one per task, tasks in turn), every `--every`-th step's agentview as the
model receives it (`libero_image`: flip, JPEG round trip, resize, center crop), with its instruction.

    python scripts/guard_frames.py --out .gpu/guard_frames.npz --frames 64 --workers 8

Writes `images (N, 224, 224, 3) uint8` and `instructions (N,)`. The frames are the states a policy meets in the task
(the expert's approach, grasp and place), so a trained model's greedy choices on them are not random near-ties.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vla.env_pool import open_pool
from vla.env_scheduler import Episode, Scheduler
from vla.evaluation import EvalConfig, plan_jobs
from vla.gl_check import RenderConfig
from vla.libero_env import SUITE_MAX_STEPS, setup_libero
from vla.libero_io import libero_image
from vla.policies import ExpertPolicy
from vla.runtime import configure_logging


def collect(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    setup_libero(args.libero_assets)  # LIBERO's config.yaml before its import, which otherwise waits on input()
    cfg = EvalConfig(task_suite=args.task_suite, policy="expert", num_trials_per_task=args.trials_per_task)
    jobs = plan_jobs(cfg, [])[1]
    jobs = [jobs[i] for i in np.argsort([job.key for job in jobs], kind="stable")]  # state 0 of every task first
    images, instructions = [], []

    def keep(episode: Episode, action: np.ndarray) -> np.ndarray:
        if episode.steps % args.every == 0 and len(images) < args.frames:
            images.append(libero_image(episode.obs["agentview_image"], center_crop=True))
            instructions.append(episode.job.task.language)
        return action

    workers = min(args.workers, len(jobs))
    with open_pool(args.task_suite, workers, ("agentview",), RenderConfig(), args.libero_assets) as pool:
        run = Scheduler(pool, ExpertPolicy(), SUITE_MAX_STEPS[args.task_suite], on_action=keep).run(jobs)
        for _ in run:
            if len(images) >= args.frames:
                break
        run.close()
    if len(images) < args.frames:
        raise SystemExit(f"the {len(jobs)} episodes gave {len(images)} frames, not {args.frames}: lower --every or "
                         "raise --trials_per_task")  # fmt: skip
    return np.stack(images), np.array(instructions)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--every", type=int, default=10, help="keep every n-th policy step of an episode")
    parser.add_argument("--trials_per_task", type=int, default=1, help="fixed initial states per task (from 0)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--task_suite", default="libero_spatial")
    parser.add_argument("--libero_assets", default=None)
    args = parser.parse_args(argv)
    if args.frames < 1 or args.every < 1:
        parser.error("--frames and --every must be >= 1")
    images, instructions = collect(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images, instructions=instructions)
    print(f"wrote {len(images)} frames of {len(set(instructions))} tasks to {args.out}")
    return args.out


if __name__ == "__main__":
    configure_logging()
    main()

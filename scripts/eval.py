"""Evaluate a policy on a LIBERO suite with OpenVLA's protocol (fixed initial states, seed 7, 10 settle steps).

    python scripts/eval.py --task_suite libero_spatial --checkpoint runs/my-run --num_envs 2
    python scripts/eval.py --task_suite libero_spatial --policy expert --num_trials_per_task 10 --num_envs 2
    python scripts/eval.py --out_dir runs/eval/x --resume true      # finish an interrupted run
    python scripts/eval.py --checkpoint runs/my-run/merged --num_envs 16 --fast_decoding false --egl_devices "[0]"

Results: <out_dir>/episodes.jsonl (one line per episode, written as it ends), summary.json (with "timing": where
the time went), videos/ (--save_videos).
"""

from __future__ import annotations

from typing import Any

import draccus

from vla.evaluation import EvalConfig, evaluate
from vla.policies import build_policy
from vla.runtime import configure_logging


def main(cfg: EvalConfig) -> dict[str, Any]:
    """Validate, build the policy, evaluate; returns the summary (also in <out_dir>/summary.json)."""
    cfg.validate()  # before any weights load
    summary = evaluate(cfg, build_policy(cfg))  # logs the results table and the timing line
    print(f"episodes: {summary['run_dir']}/episodes.jsonl\nsummary:  {summary['run_dir']}/summary.json")
    return summary


if __name__ == "__main__":
    configure_logging()
    main(draccus.parse(EvalConfig))

"""Evaluate a policy on a LIBERO suite with OpenVLA's protocol (fixed initial states, seed 7, 10 settle steps).

    python scripts/eval.py --task_suite libero_spatial --checkpoint runs/my-run --num_envs 2
    python scripts/eval.py --task_suite libero_spatial --policy expert --num_trials_per_task 10 --num_envs 2
    python scripts/eval.py --out_dir runs/eval/x --resume true      # finish an interrupted run
    python scripts/eval.py --out_dir runs/eval/x --report_only true # its results so far (no model, no simulator)
    python scripts/eval.py --checkpoint runs/my-run/merged --num_envs 16 --fast_decoding false --egl_devices "[0]"
    python scripts/eval.py --policy server --server_url http://127.0.0.1:8000 --num_envs 4   # a scripts/serve.py
    # the official run_libero_eval.py command line, unchanged (hub ids resolve through the Hugging Face cache):
    python scripts/eval.py --model_family openvla --pretrained_checkpoint openvla/openvla-7b-finetuned-libero-spatial \\
        --task_suite_name libero_spatial --center_crop True

Results: <out_dir>/episodes.jsonl (one line per episode, written as it ends), summary.json (with "timing": where
the time went), videos/ (--save_videos). Official flag names: vla/eval_cli.py, docs/DROP_IN.md.
"""

from __future__ import annotations

import sys
from typing import Any

from vla.eval_cli import parse
from vla.evaluation import EvalConfig, evaluate, format_table, report
from vla.policies import build_policy
from vla.runtime import configure_logging


def main(cfg: EvalConfig) -> dict[str, Any]:
    """Validate, build the policy, evaluate; returns the summary (also in <out_dir>/summary.json). With report_only,
    the results so far of the run in out_dir, printed (nothing loaded, run or written)."""
    if cfg.report_only:
        if cfg.out_dir is None:
            raise ValueError("report_only needs --out_dir: the folder of the evaluation to report")
        summary = report(cfg.out_dir)
        print(format_table(summary))
        return summary
    cfg.validate()  # before any weights load
    policy = build_policy(cfg)
    try:
        summary = evaluate(cfg, policy)  # logs the results table and the timing line
    finally:
        if hasattr(policy, "close"):  # RemotePolicy: its HTTP client and request threads
            policy.close()
    print(f"episodes: {summary['run_dir']}/episodes.jsonl\nsummary:  {summary['run_dir']}/summary.json")
    return summary


if __name__ == "__main__":
    configure_logging()
    main(parse(sys.argv[1:]))

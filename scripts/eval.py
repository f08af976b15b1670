"""Evaluate a policy on a LIBERO suite with OpenVLA's protocol (fixed initial states, seed 7, 10 settle steps).

    python scripts/eval.py --task_suite libero_spatial --checkpoint runs/my-run --num_envs 2
    python scripts/eval.py --task_suite libero_spatial --policy expert --num_trials_per_task 10 --num_envs 2
    python scripts/eval.py --out_dir runs/eval/x --resume true      # finish an interrupted run

Results: <out_dir>/episodes.jsonl (one line per episode, written as it ends), summary.json, videos/ (--save_videos).
"""

from __future__ import annotations

import logging
from typing import Any

import draccus

from vla.evaluation import EvalConfig, evaluate
from vla.policies import ExpertPolicy, Policy, RandomPolicy, VLAPolicy

log = logging.getLogger("eval")


def build_policy(cfg: EvalConfig) -> Policy:
    """The policy `cfg.policy` names; for "vla", the checkpoint loaded with the suite's action statistics."""
    if cfg.policy == "random":
        return RandomPolicy(cfg.seed)
    if cfg.policy == "expert":
        return ExpertPolicy()
    import torch

    from vla.libero_io import resolve_suite_unnorm_key
    from vla.model import VLA
    from vla.normalization import resolve_unnorm_key

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = cfg.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype_name!r}: use a torch dtype name such as bfloat16 or float32")
    vla = VLA.from_pretrained(cfg.checkpoint, device=device, dtype=dtype, quantization=cfg.quantization)
    vla.eval()
    if cfg.unnorm_key is not None:
        unnorm_key = resolve_unnorm_key(vla.norm_stats, cfg.unnorm_key)
    else:
        unnorm_key = resolve_suite_unnorm_key(vla.norm_stats, cfg.task_suite)
    log.info("loaded %s on %s (%s); un-normalizing with %r", cfg.checkpoint, device, dtype_name, unnorm_key)
    return VLAPolicy(vla, unnorm_key, cfg.center_crop)


def main(cfg: EvalConfig) -> dict[str, Any]:
    """Validate, build the policy, evaluate; returns the summary (also in <out_dir>/summary.json)."""
    cfg.validate()  # before any weights load
    summary = evaluate(cfg, build_policy(cfg))  # logs the results table
    print(f"episodes: {summary['run_dir']}/episodes.jsonl\nsummary:  {summary['run_dir']}/summary.json")
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(draccus.parse(EvalConfig))

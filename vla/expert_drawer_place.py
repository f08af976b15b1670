"""Putting an object into an open wooden-cabinet drawer (after `DrawerSkill` opened it): a pick-and-place whose
target is the drawer's region site (`<cabinet>_<level>_region_pos`, it moves with the drawer).

In libero_goal the bowl stands under the top drawer once that is open (~15 cm of room between the table and the
drawer's bottom), so a straight lift knocks the bowl's rim against the drawer: the lift first slides the held object
low over the table back towards where the arm started (the robot's side, the skill sequence leaves it there), then
rises, and only then carries it over the drawer; the carry height clears the drawer's walls (`ExpertConfig.carry`
above the site) and the lowering stops where the object touches the drawer's bottom."""

from __future__ import annotations

import dataclasses

import numpy as np

from vla.expert import ExpertConfig, ScriptedExpert

LOW_LIFT = 0.04  # height (m) above the grasp at which the held object slides out from under the drawer
FORWARD = 0.03  # place this far from the region site towards the drawer's front (away from the cabinet's top)
SLIDE_OUT = 0.06  # the held object slides this far along the drawer's slide (out of the cabinet) before rising
CLEAR_XY = 0.02
ALIGN_XY = 0.02  # the approach goes down only this close (xy) over the grasp point (a diagonal hooks the drawer)  # within this of the start (xy), the lift may rise to the carry height
GRASP_TURN = -30.0  # degrees from the side facing the robot: grasp on the side away from the drawer's front


class DrawerPlacement(ScriptedExpert):
    """`ScriptedExpert` into a drawer region: lifts out sideways first (see the module docstring)."""

    def __init__(self, obj: str, target: str, *, config: ExpertConfig | None = None, drawer: str | None = None):
        # carry: the held object's base 6 cm above the site clears the drawer's walls (3 cm above the site)
        config = dataclasses.replace(config or ExpertConfig(), grasp_angle=GRASP_TURN, carry=0.06)
        super().__init__(obj, target, config=config, drawer=drawer)
        self.lift_xy: np.ndarray | None = None
        self.cabinet = target.split("_region")[0].rsplit("_", 1)[0]  # wooden_cabinet_1_top_region -> wooden_cabinet_1

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        # The drawer slides out along the line from the cabinet's fixed top_side site to the region site.
        side = obs.get(f"{self.cabinet}_top_side_pos")
        out = None if side is None else (np.asarray(obs[f"{self.target}_pos"], float) - side)[:2]
        self.front = None if out is None or np.linalg.norm(out) < 0.05 else np.array([*out / np.linalg.norm(out), 0])
        return super().act(obs)

    def _waypoint(self, eef: np.ndarray, obj: np.ndarray, target: np.ndarray) -> tuple[np.ndarray | None, float]:
        goal, gripper = super()._waypoint(eef, obj, target)
        if self.phase in ("carry", "lower") and self.front is not None:
            goal = goal + FORWARD * self.front
        if self.phase == "approach" and np.linalg.norm(goal[:2] - eef[:2]) > ALIGN_XY:
            goal = np.array([goal[0], goal[1], max(goal[2], eef[2])])  # over the grasp point first, then down
        if self.phase == "lift":
            if self.phase_steps == 1 or self.lift_xy is None:  # straight out of the drawer's way, along its slide
                out = self.front[:2] if self.front is not None else self.home[0] - eef[:2]
                self.lift_xy = eef[:2] + SLIDE_OUT * out / max(np.linalg.norm(out), 1e-9)
            home = self.lift_xy
            low = np.linalg.norm(eef[:2] - home) > CLEAR_XY
            goal = np.array([home[0], home[1], min(self.carry_z, self.grasp_z + LOW_LIFT) if low else self.carry_z])
        return goal, gripper

"""Putting an object into an open wooden- or white-cabinet drawer (after `DrawerSkill` opened it, or open from the
start): the waypoint changes of the pick-and-place (`vla.expert.ScriptedExpert` with `into_drawer`) whose target is
the drawer's region site (`<cabinet>_<level>_region_pos`, it moves with the drawer).

In libero_goal the bowl stands under the top drawer once that is open (~15 cm of room between the table and the
drawer's bottom), so a straight lift knocks the bowl's rim against the drawer: the lift first slides the held object
low over the table back towards where the arm started (the robot's side, the skill sequence leaves it there), then
rises, and only then carries it over the drawer; the carry height clears the drawer's walls (`ExpertConfig.carry`
above the site) and the lowering stops where the object touches the drawer's bottom."""

from __future__ import annotations

import dataclasses

import numpy as np

from vla.expert_drawer import DrawerSkill
from vla.expert_skills import level_first

LOW_LIFT = 0.04  # height (m) above the grasp at which the held object slides out from under the drawer
FORWARD = 0.03  # place this far from the region site towards the drawer's front (away from the cabinet's top)
SLIDE_OUT = 0.06  # the held object slides this far along the drawer's slide (out of the cabinet) before rising
CLEAR_XY = 0.02  # within this of the slide's end (xy), the lift may rise to the carry height
ALIGN_XY = 0.02  # the approach goes down only this close (xy) over the grasp point (a diagonal hooks the drawer)
GRASP_TURN = -30.0  # degrees from the side facing the robot: grasp on the side away from the drawer's front
MIN_OPENING = 0.05  # the slide direction is read from the sites only once the drawer is open this far
CARRY = 0.06  # the held object's base this far above the site clears the drawer's walls (3 cm above the site)


class IntoDrawer:
    """Waypoint changes for a pick-and-place into the drawer `region` (see the module docstring)."""

    def __init__(self, region: str):
        self.drawer = DrawerSkill(region)  # its geometry only: the cabinet's pose and the drawer's opening
        self.front: np.ndarray | None = None  # unit direction (3,) the drawer slides out along
        self.lift_xy: np.ndarray | None = None
        # Under another drawer (libero_10's bottom drawer, fully open from the start, the bowl on the table in front
        # of it), the hand must stay out of the cabinet: its +-10 cm length along the bar (grasped on the robot's side,
        # which faces along the bar there), the object placed at the site (the open part's middle), not in front of it.
        # With the top drawer's grasp and place, the hand's far end caught the bars above while lowering and the bowl
        # came down on the drawer's front wall: task 3 shut with the bowl in on 5 of the fixed states 0-9 (now 10).
        self.below = not region.endswith("_top_region")
        self.forward = 0.0 if self.below else FORWARD

    def configure(self, config):
        """The pick-and-place's `ExpertConfig` with a lower carry, the grasp turned away from the drawer (not under
        another drawer: there from the robot's side)."""
        return dataclasses.replace(config, grasp_angle=0.0 if self.below else GRASP_TURN, carry=CARRY)

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """The drawer's slide direction, once it is open far enough for its sites to give it (>= 5 cm)."""
        if f"{self.drawer.cabinet}_top_side_pos" not in obs or self.drawer.opening(obs) < MIN_OPENING:
            self.front = None
        else:
            self.front = self.drawer.frame(obs)[2]

    def shape(self, expert, eef: np.ndarray, goal: np.ndarray | None) -> np.ndarray | None:
        """`expert`'s waypoint `goal` for its current phase, changed for the drawer."""
        phase = expert.phase
        if phase in ("carry", "lower") and self.front is not None:
            goal = goal + self.forward * self.front
        if phase == "approach":
            goal = level_first(goal, eef, ALIGN_XY)
        if phase == "lift":
            if expert.phase_steps == 1 or self.lift_xy is None:  # straight out of the drawer's way, along its slide
                out = self.front[:2] if self.front is not None else expert.home[0] - eef[:2]
                self.lift_xy = eef[:2] + SLIDE_OUT * out / max(np.linalg.norm(out), 1e-9)
            end, carry_z = self.lift_xy, expert.carry_z
            low = np.linalg.norm(eef[:2] - end) > CLEAR_XY
            goal = np.array([end[0], end[1], min(carry_z, expert.grasp_z + LOW_LIFT) if low else carry_z])
        return goal

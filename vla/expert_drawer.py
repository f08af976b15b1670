"""Scripted drawer opening for the wooden cabinet (a phase machine on privileged observations, like the knob skill).

Geometry, measured once from LIBERO's wooden_cabinet model (cabinet frame; the drawers slide along its -y axis; the
white_cabinet model is the same up to its texture, so it shares every constant here):
each drawer's handle bar is a fixed offset from its `<cabinet>_<level>_region` site, which moves with the drawer;
the cabinet's `<cabinet>_top_side` site does not move. The bar is 9 cm long along the cabinet's x axis, 1.6 cm
thick, 1.6 cm in front of the drawer face, held by two posts behind it; the drawer above's bar is 7 cm higher.

Grasped from above, the hand hits the bar of the drawer above (or the cabinet top) before the far finger reaches
the gap behind the bar. So the gripper points horizontally at the bar's end nearest the robot, fingers closing
vertically (above and below the bar, clear of the posts behind it), slides onto the bar along its length, closes,
and pulls along the slide axis. LIBERO counts a drawer open past 0.14 m of travel (its slide joint below -0.14)."""

from __future__ import annotations

import numpy as np

from vla.expert_skills import Skill, UnsupportedTaskError, _quat_mul, category, fixture_of, level_first

HANDLE = (-0.00606, -0.11289, -0.00649)  # handle bar centre minus the drawer's region site (cabinet frame)
SIDE_TO_REGION = (-0.00026, -0.00439)  # region site minus top_side site in the cabinet's xy frame, drawer closed
OPEN_TRAVEL = 0.14  # LIBERO's Open: the drawer's slide joint past -0.14 m
BAR_HALF_LENGTH = 0.0445
# Opening for putting an object in. libero_goal's bowl stands where the fully open top drawer's front would be, and
# the drawer slides on ~1.6 cm past the pull's end. Asked for 0.10 m (0.117 reached), the front stood over the far end
# of the hand grasping the bowl when the bowl stood 1 cm nearer the cabinet: the hand stalled on it going down (task 3,
# 43/50). 0.06 to 0.09 m all put the bowl in on those states (0.06 m slowly): 0.08 m (0.096 reached) is the middle.
PLACE_TRAVEL = 0.08
CABINETS = ("wooden_cabinet", "white_cabinet")  # the cabinet models this geometry holds for


def _axis_quat(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    return np.array([*(np.sin(angle / 2) * np.asarray(axis, float)), np.cos(angle / 2)])


def _rotate(yaw: float, v) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1], v[2]])


class DrawerSkill(Skill):
    """Open one drawer of a wooden cabinet: turn the gripper to point along the bar (+x, away from the robot),
    fingers closing vertically; go in front of the bar's near end; slide onto it; close; pull along the slide axis
    until the drawer is open; let go; back off; turn the gripper back down (the next skill starts from there)."""

    PHASES = ("turn", "approach", "insert", "close", "pull", "release", "back", "restore", "done")
    grip_depth = 0.025  # gripper site this far along the bar from its near end
    standoff = 0.10  # approach point this far before the bar's near end
    extra_pull = 0.03  # pull goal beyond the open threshold (the drawer lags the hand)
    close_steps = 15
    level_xy = 0.03  # the approach goes down only this close (xy) to its point in front of the bar
    restore_home = True  # end at the starting pose (False: above where it let go)
    skew = np.deg2rad(35)  # the gripper points this far off the bar, out of the cabinet: the hand and wrist keep
    # clear of what stands beside the cabinet on the robot's side (libero_goal's wine rack)

    def __init__(self, region: str, travel: float = OPEN_TRAVEL):
        self.region, self.cabinet, self.travel = region, fixture_of(region), travel
        if category(self.cabinet) not in CABINETS:
            raise UnsupportedTaskError(f"no drawer geometry for {self.cabinet!r} (only {', '.join(CABINETS)})")
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.home_quat: np.ndarray | None = None
        self.pull_goal: np.ndarray | None = None

    def frame(self, obs: dict[str, np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
        """(cabinet yaw, handle bar centre, unit slide direction out of the cabinet) from the observations."""
        yaw, _ = self._pose(obs)
        handle = np.asarray(obs[f"{self.region}_pos"], float) + _rotate(yaw, HANDLE)
        return yaw, handle, _rotate(yaw, (0.0, -1.0, 0.0))

    def _pose(self, obs: dict[str, np.ndarray]) -> tuple[float, float]:
        """(cabinet yaw, drawer opening in m). The observations carry no fixture orientation; the region site moves
        from the fixed top_side site along the cabinet's -y axis, so their offset in the table plane gives both:
        its length the travel, its direction the yaw."""
        d = (
            np.asarray(obs[f"{self.region}_pos"], float)[:2]
            - np.asarray(obs[f"{self.cabinet}_top_side_pos"], float)[:2]
        )
        dx, dy = SIDE_TO_REGION
        travel = float(np.sqrt(max(d @ d - dx * dx, 0.0)) + dy)  # local offset (dx, dy - travel)
        yaw = float(np.arctan2(d[1], d[0]) - np.arctan2(dy - travel, dx))
        return yaw, travel

    def opening(self, obs: dict[str, np.ndarray]) -> float:
        """How far (m) the drawer is out along its slide (LIBERO's joint position, negated)."""
        return self._pose(obs)[1]

    def finished(self, obs: dict[str, np.ndarray]) -> bool:
        return self.phase == "done"

    def grasp_point(self, obs: dict[str, np.ndarray], eef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(grip point on the bar's end nearest `eef`, unit direction along the bar away from that end)."""
        yaw, handle, _ = self.frame(obs)
        along = _rotate(yaw, (1.0, 0.0, 0.0))
        if (eef - handle) @ along > 0:
            along = -along
        return handle - along * (BAR_HALF_LENGTH - self.grip_depth), along

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        eef, quat = self._tick(obs)
        if self.home_quat is None:
            self.home_quat, self.home = self.quat.copy(), eef.copy()
        grip, along = self.grasp_point(obs, eef)
        _, _, slide = self.frame(obs)
        phase, gripper, speed = self.phase, -1.0, 1.0
        point_dir = along * np.cos(self.skew) - slide * np.sin(self.skew)
        pre = grip - point_dir * self.standoff
        if phase == "turn":  # point along the bar, fingers closing vertically, before coming near the cabinet
            point = np.arctan2(point_dir[1], point_dir[0])
            self.quat = _quat_mul(
                _axis_quat(tuple(point_dir), -np.pi / 2),
                _quat_mul(_axis_quat((0, 0, 1), point), _quat_mul(_axis_quat((0, 1, 0), -np.pi / 2), self.home_quat)),
            )
            goal = np.array([eef[0], eef[1], max(eef[2], pre[2])])
            if self.phase_steps >= 40:
                self._next("approach")
        elif phase == "approach":
            # Over the approach point first, then down: the turned hand reaches ~10 cm below the gripper site (its
            # fingers close vertically), so a diagonal way down to a middle drawer's handle swept over libero_goal's
            # wine bottle and tipped it against the hand (task 0 stalled on fixed states 7, 13 and 38).
            goal = level_first(pre, eef, self.level_xy)
            # Before a placement (short opening, the episode's steps are short), a stall on the way (the hand on the
            # cabinet's edge) ends the approach: the slide along the bar from there works (for Open it cost 1/10).
            stalled = self.travel < OPEN_TRAVEL and self.still_steps >= 10
            if self._arrived(eef, goal, 0.008, timeout=120) or stalled:
                self._next("insert")
        elif phase == "insert":
            goal, speed = grip, 0.4
            if self._arrived(eef, goal, 0.006, timeout=80):
                self._next("close")
        elif phase == "close":
            goal, gripper = grip, 1.0
            if self.phase_steps >= self.close_steps:
                self.pull_goal = eef + slide * (self.travel + self.extra_pull - max(self.opening(obs), 0.0))
                self._next("pull")
        elif phase == "pull":
            goal, gripper, speed = self.pull_goal, 1.0, 0.5
            if self.opening(obs) > self.travel + 0.005 or self.phase_steps > 150:
                self._next("release")
        elif phase == "release":
            goal = eef
            if self.phase_steps >= 10:
                self._next("back")
        elif phase == "back":
            if self.phase_steps == 1:
                self.back_goal = eef - point_dir * self.standoff + [0, 0, 0.05]
            goal = self.back_goal
            if self._arrived(eef, goal, 0.02, timeout=60):
                self._next("restore")
        elif phase == "restore":
            self.quat = self.home_quat.copy()
            # back where it started, above the table's middle: a placement next picks from the robot's side
            goal = self.home if self.restore_home else self.back_goal + [0, 0, 0.08]
            if self.phase_steps >= 15 and self._arrived(eef, goal, 0.02, timeout=40):
                self._next("done")
        else:
            goal = eef
        return self._action(eef, quat, goal, gripper, speed)

"""Scripted drawer closing for the wooden and white cabinets: push the open drawer's handle bar into the cabinet with
the closed fingers (a phase machine on privileged observations, like `vla.expert_drawer.DrawerSkill`, whose geometry
it reads: the cabinet's turn, the bar's position and the drawer's opening, from the drawer's region site and the
cabinet's fixed top_side site).

LIBERO counts a drawer closed only once its slide joint is above 0 (`WhiteCabinet.is_close`; the joint's range is
-0.16..0.01 m, the drawer goes in up to 1 cm past flush), so the push aims a few millimetres past the closed position.

Why the gripper tilts: the bar of the drawer above stands 7 cm higher and as far out as the pushed bar once that is
in. By robosuite's Panda model, the hand spans +-3.2 cm across the fingers' closing axis and begins 3.1 cm above the
grip site; the closed fingers span +-1.05 cm and end 0.9 cm below it. Pointing straight down with the fingertips on
the bar, the hand stands 2.1 cm further in than the fingers at the height of the bar above, and the forearm (link 5)
stands over the cabinet's top: it met the top's front edge with the drawer still 6 cm open (libero_10 task 3, fixed
states 0-9: 0/10). Tilted about the closing axis with the fingertips leading into the cabinet, hand and wrist trail
them; the closing axis along the bar keeps the hand's +-10 cm length level. Measured on the same states: 15 degrees
10/10 in ~395 steps, 30 degrees 10/10 in ~225 (the hand's lowest front edge 1.4 mm behind the fingertips, 1.2 cm at
the height of the bar above), 45 degrees 9/10 (one stopped 2 mm short; the wrist comes near libero_10's wine rack)."""

from __future__ import annotations

import numpy as np

from vla.expert_drawer import DrawerSkill, _axis_quat
from vla.expert_skills import Skill, _quat_mul, _yaw, _yaw_quat, rotation_error

BAR_HALF_DEPTH = 0.008  # the handle bar's front face from its centre, along the slide
TILT = np.deg2rad(30)  # fingertips this far from straight down, towards the cabinet
FINGER_HALF_WIDTH, FINGER_BELOW = 0.0105, 0.009  # closed fingers: half their thickness, their tips below the grip site
OVERSHOOT = 0.006  # push goal: the drawer this far past flush (LIBERO: closed above 0, the joint stops at 0.01)
CLOSED = 0.002  # the push ends once the drawer is this far past flush (by the sites)
STANDOFF = 0.05  # the fingertips go down this far in front of the bar
HOVER = 0.08  # ... from this high above the bar


class DrawerCloseSkill(Skill):
    """Close one open drawer of a wooden or white cabinet: turn the gripper (fingers closed) so that its closing axis
    lies along the bar and its fingertips point down and into the cabinet; go over a point in front of the bar, down to
    the bar's height, and push along the slide until the drawer is shut; back off out of the cabinet's way."""

    PHASES = ("turn", "approach", "lower", "push", "back", "done")
    turn_steps = 30
    push_speed = 0.5
    push_timeout = 150

    def __init__(self, region: str):
        self.drawer = DrawerSkill(region)  # its geometry only (raises for other cabinets)
        self.region = region
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.hold: np.ndarray | None = None  # where the turn holds the hand (xy) while it rises
        self.back_goal: np.ndarray | None = None

    def finished(self, obs: dict[str, np.ndarray]) -> bool:
        return self.phase == "done"

    def _push_quat(self, quat: np.ndarray, slide_in: np.ndarray) -> np.ndarray:
        """Gripper orientation for the push: the current one's heading unwound (pointing down), turned so that the
        fingers close across the slide, then tilted about the closing axis so that the fingertips lead along it. Of
        the two headings that do (the gripper is symmetric under a half turn), the one nearer the current: a half
        turn more swung the arm through a stretched pose that took the hand 5 cm off its way (libero_10 task 3, fixed
        state 5: shut after a second push, at step 506 of 520, instead of 224)."""
        down = _quat_mul(_yaw_quat(-_yaw(quat)), quat)
        heading = np.arctan2(slide_in[1], slide_in[0])
        axis = np.cross([0.0, 0.0, -1.0], slide_in)
        tilt = _axis_quat(tuple(axis / np.linalg.norm(axis)), TILT)
        turns = [_quat_mul(tilt, _quat_mul(_yaw_quat(heading + half), down)) for half in (0.0, np.pi)]
        return min(turns, key=lambda q: np.linalg.norm(rotation_error(q, quat)))

    def contact_goal(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(grip site goal that puts the fingertips on the bar's front with the drawer `OVERSHOOT` past flush, unit
        slide direction into the cabinet)."""
        _, handle, out = self.drawer.frame(obs)
        closed = handle - out * self.drawer.opening(obs)  # the bar's centre with the drawer shut
        tip_ahead = FINGER_HALF_WIDTH * np.cos(TILT) + FINGER_BELOW * np.sin(TILT)  # fingertip front from the site
        return closed + out * (BAR_HALF_DEPTH + tip_ahead - OVERSHOOT), -out

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        eef, quat = self._tick(obs)
        closed_goal, slide_in = self.contact_goal(obs)
        opening = self.drawer.opening(obs)
        pre = closed_goal - slide_in * (opening + OVERSHOOT + STANDOFF)  # `STANDOFF` before the bar where it is now
        phase, speed = self.phase, 1.0
        if phase == "turn":  # fingers closed and turned before coming near the cabinet; rise to the hover height
            if self.hold is None:
                self.quat, self.hold = self._push_quat(quat, slide_in), eef.copy()
            goal = np.array([self.hold[0], self.hold[1], max(self.hold[2], pre[2] + HOVER)])
            if self.phase_steps >= self.turn_steps:
                self._next("approach")
        elif phase == "approach":
            goal = pre + [0.0, 0.0, HOVER]
            if self._arrived(eef, goal, 0.02, timeout=100):
                self._next("lower")
        elif phase == "lower":
            goal = pre
            if self._arrived(eef, goal, 0.01, timeout=80):
                self._next("push")
        elif phase == "push":
            goal, speed = closed_goal, self.push_speed
            if opening < -CLOSED or self.phase_steps > self.push_timeout:
                self._next("back")
        elif phase == "back":
            if self.back_goal is None:
                self.back_goal = eef - slide_in * STANDOFF + [0.0, 0.0, HOVER]
            goal = self.back_goal
            if self._arrived(eef, goal, 0.02, timeout=60):
                self._next("done")
        else:
            goal = eef
        return self._action(eef, quat, goal, 1.0, speed)

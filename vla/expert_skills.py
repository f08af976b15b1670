"""Scripted expert skills beyond pick-and-place (here: turning a stove knob on; opening a drawer lives in
`vla.expert_drawer`, closing one in `vla.expert_drawer_close`, carrying a plate by its rim in `vla.expert_push`), and
the reason for the drawers it cannot handle (other cabinets than the wooden and the white one). Each skill is a small
phase machine on privileged observations (`robot0_eef_*`, object `<name>_pos`, region sites `<site>_pos`): `reset()`,
`act(obs) -> (7,)` LIBERO action, `finished(obs)` for sequencing.

Fixtures (stoves) expose no joint state in the observations, so their geometry is measured once from the LIBERO
models and stored here relative to a region site: a stove's knob is a fixed offset from its `_cook_region` site.
The offset holds for the unrotated stoves of the LIBERO scenes. The knob's angle is not observed: the skill twists
once and reports finished; a sequence whose last skill it is twists again while the episode goes on."""

from __future__ import annotations

import re

import numpy as np

ROT_SCALE = 0.5  # OSC_POSE: rotation action 1.0 asks for a 0.5 rad turn
PAD_OFFSET = 0.0422  # an open Panda finger pad's centre from the gripper site, along the closing (world y) axis


class UnsupportedTaskError(ValueError):
    """The task's goal needs a skill or a fixture the scripted expert does not have."""


STOVE_KNOB = (-0.15, 0.0, 0.0)  # the knob's hinge axis minus the stove's cook-region site (flat_stove)
# The knob's grip is a ridge across its top, ~9 cm long along x (from -5.2 to +4.0 cm of the axis) and 2.5 cm wide,
# standing from 0.013 to 0.045 m above the stove's base; its hinge (vertical, damping 1, limits -0.005..2.1 rad)
# turns the stove on past +0.5 rad, counter-clockwise seen from above.
KNOB_GRIP = (-0.006, 0.0, 0.03)  # gripper site while holding the ridge, from the knob's axis at the stove's base


def category(name: str) -> str:
    """`wooden_cabinet_1_top_region` -> `wooden_cabinet` (the fixture category of an instance or region name)."""
    return re.sub(r"_\d+(_.*)?$", "", name)


def fixture_of(region: str) -> str:
    """`wooden_cabinet_1_top_region` -> `wooden_cabinet_1`."""
    match = re.match(r"(.*?_\d+)(_|$)", region)
    if match is None:
        raise UnsupportedTaskError(f"cannot tell the fixture of {region!r}")
    return match.group(1)


DRAWER_REASON = (
    "drawers are supported in the wooden_cabinet and white_cabinet models only (opening one, putting an object into "
    "an open one, closing one: vla.expert_drawer, vla.expert_drawer_place, vla.expert_drawer_close); other cabinets' "
    "handles and slides have no stored geometry"
)


def is_drawer_region(name: str) -> bool:
    return "cabinet" in category(name) and name.endswith("_region")


def _yaw_quat(angle: float) -> np.ndarray:  # a turn about world z, (x, y, z, w)
    return np.array([0.0, 0.0, np.sin(angle / 2), np.cos(angle / 2)])


def _yaw(quat: np.ndarray) -> float:
    """Heading (rad) of an (x, y, z, w) quaternion: the world-frame angle of its rotated x axis."""
    x, y, z, w = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (x, y, z, w) quaternions, as robosuite
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def _quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def _quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:  # vector v (3,) turned by quaternion q (x, y, z, w)
    return _quat_mul(_quat_mul(q, np.array([*v, 0.0])), _quat_conj(q))[:3]


# How far (rad) from the home heading `steady_yaw` may keep turning the gripper: past +-90 degrees by 20 (at -90 the
# Panda's last joint is ~0.55 rad from its limit)
YAW_REACH = np.pi / 2 + np.deg2rad(20.0)
# A planned yaw that moved by a half turn give or take this much was the object's heading crossing +-180 degrees
FLIP_TOLERANCE = np.deg2rad(10.0)


def steady_yaw(yaw: float, last: float | None) -> float:
    """The grasp yaw to turn to (rad from the home heading): `yaw`, planned in [-90, 90) degrees, unless it jumped by
    about a half turn from `last` (the yaw planned the step before; None: none), where the same grasp `yaw` +- a half
    turn (the gripper is symmetric) continues `last` and stays within YAW_REACH. A moka pot at 180 degrees jittered
    across +-180 mid-descent, the planned yaw flipped, the wrist turned into its joint limit and the arm swept the
    other pot off the stove (libero_10 task 8: 17/30 on fixed states 0-29 that way, 30/30 this way). Any other change
    (a re-planned grasp after a retry) takes `yaw` itself: keeping the yaw nearest `last` there walked the wrist out to
    -109 degrees, where the approach stalled (libero_goal task 1, fixed state 21)."""
    if last is not None:
        for turned in (yaw - np.pi, yaw + np.pi):
            if abs(turned - last) <= FLIP_TOLERANCE and abs(turned) <= YAW_REACH:
                return turned
    return yaw


def level_first(goal: np.ndarray, eef: np.ndarray, near: float) -> np.ndarray:
    """`goal`, or while the hand is more than `near` (m) from it in xy, the point above it at the hand's height (never
    lower than `goal`): over first, then down, so the hand does not sweep across what stands on the way."""
    if np.linalg.norm(goal[:2] - eef[:2]) > near:
        return np.array([goal[0], goal[1], max(goal[2], eef[2])])
    return goal


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) of the world-frame rotation taking quaternion `current` to `target` (shortest way)."""
    q = _quat_mul(target, _quat_conj(current))
    if q[3] < 0:
        q = -q
    sin = np.linalg.norm(q[:3])
    if sin < 1e-9:
        return np.zeros(3)
    return q[:3] / sin * 2.0 * np.arctan2(sin, q[3])


class Skill:
    """Shared phase bookkeeping and the move/hold-orientation action."""

    gain, still_speed = 20.0, 0.001

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.phase, self.phase_steps, self.still_steps = self.PHASES[0], 0, 0
        self.quat: np.ndarray | None = None
        self.last_eef: np.ndarray | None = None

    PHASES: tuple[str, ...] = ("start",)

    def _next(self, phase: str) -> None:
        self.phase, self.phase_steps, self.still_steps = phase, 0, 0

    def _tick(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        eef, quat = np.asarray(obs["robot0_eef_pos"], float), np.asarray(obs["robot0_eef_quat"], float)
        if self.quat is None:
            self.quat = quat.copy()  # hold the starting orientation (gripper down, fingers closing along y)
        moved = np.inf if self.last_eef is None else np.linalg.norm(eef - self.last_eef)
        self.still_steps = self.still_steps + 1 if moved < self.still_speed else 0
        self.last_eef, self.phase_steps = eef, self.phase_steps + 1
        return eef, quat

    def _action(self, eef: np.ndarray, quat: np.ndarray, goal: np.ndarray, gripper: float, speed: float = 1.0):
        move = np.clip(self.gain * (goal - eef), -speed, speed)
        rotation = np.clip(rotation_error(self.quat, quat) / ROT_SCALE, -1, 1)
        return np.concatenate([move, rotation, [gripper]])

    def _arrived(self, eef: np.ndarray, goal: np.ndarray, tolerance: float = 0.01, timeout: int = 80) -> bool:
        return (
            np.linalg.norm(goal - eef) < tolerance
            or (self.still_steps >= 5 and np.linalg.norm(goal - eef) < 3 * tolerance)
            or self.phase_steps > timeout
        )


class KnobSkill(Skill):
    """Turn a flat stove on: grasp the ridge on the knob's top with the fingers closing across it (the gripper's
    starting yaw), then twist the wrist counter-clockwise; the ridge's ends carry the wrist's torque to the hinge
    (pushing the ridge with the closed fingers stalls on its edge a few degrees in)."""

    PHASES = ("approach", "descend", "close", "twist", "release", "lift", "done")
    twist = 0.9  # rad of wrist yaw asked for (the stove is on past 0.5 rad of knob)
    twist_steps = 40

    def __init__(self, stove: str):
        if category(stove) != "flat_stove":
            raise UnsupportedTaskError(f"no knob geometry for {stove!r} (only flat_stove)")
        self.stove = stove
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.home_quat: np.ndarray | None = None

    def finished(self, obs: dict[str, np.ndarray]) -> bool:
        return self.phase == "done"

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        eef, quat = self._tick(obs)
        if self.home_quat is None:
            self.home_quat = self.quat.copy()
        grip = np.asarray(obs[f"{self.stove}_cook_region_pos"], float) + STOVE_KNOB + KNOB_GRIP
        phase, gripper = self.phase, -1.0
        if phase == "approach":
            goal = grip + [0, 0, 0.08]
            if self._arrived(eef, goal, 0.01):
                self._next("descend")
        elif phase == "descend":
            goal = grip
            if self._arrived(eef, goal, 0.006):
                self._next("close")
        elif phase == "close":
            goal, gripper = grip, 1.0
            if self.phase_steps >= 12:
                self._next("twist")
        elif phase == "twist":
            goal, gripper = grip, 1.0
            half = self.twist / 2
            self.quat = _quat_mul(np.array([0.0, 0.0, np.sin(half), np.cos(half)]), self.home_quat)
            if self.phase_steps >= self.twist_steps:
                self._next("release")
        elif phase == "release":
            goal = eef
            if self.phase_steps >= 8:
                self._next("lift")
        elif phase == "lift":
            goal = np.array([eef[0], eef[1], grip[2] + 0.12])
            if self._arrived(eef, goal, 0.02, timeout=30):
                self.quat = self.home_quat.copy()
                self._next("done")
        else:
            goal = eef
        return self._action(eef, quat, goal, gripper)


def parse_goal(bddl: str, section: str = ":goal") -> list[tuple[str, ...]]:
    """The goal predicates of a BDDL problem, lower-cased: `(:goal (And (On bowl_1 plate_1)))` ->
    [("on", "bowl_1", "plate_1")]; `section=":init"`: the initial predicates instead."""
    start = bddl.find(f"({section}")
    if start < 0:
        raise UnsupportedTaskError(f"BDDL problem has no ({section} ...) section")
    depth, end = 0, start
    for end in range(start, len(bddl)):
        depth += {"(": 1, ")": -1}.get(bddl[end], 0)
        if depth == 0:
            break
    inner = re.findall(r"\(([^()]+)\)", bddl[start + len(section) + 1 : end])
    return [tuple(part.lower() for part in atom.split()) for atom in inner]

"""Demonstrations of recovering from a missed grasp.

A VLA trained on the scripted expert's successes never sees a failed grasp, so it cannot recover from one: on
libero_spatial's bowl-in-the-drawer task every model so far closed its gripper in the drawer, came out empty, carried
nothing to the plate and hovered there (docs/RESULTS.md, "Why task 4 fails"), and the bowl on the cookie box (task 3)
fails the same way in part. `RehearsedMiss` is the expert's pick with a rehearsed miss in front: its first grasp
closes `miss_height` above the grasp point, on air; it lifts and carries the empty grip for up to `miss_steps` steps,
as the models do; then it notices, opens, goes back and grasps as usual. `rehearsing` is True for the actions of the
miss, which the demonstration recorder leaves out (`vla.demos`): a frame-by-frame policy learns from the rest what to
do in those states (open, go back down), never the miss itself. Should the fingers catch the object after all (it
rises with the grip), the pick goes on as an honest one, recorded from there: a recovery that opens a full grip would
teach dropping the object. `RehearsedMiss.from_bddl(bddl, config=...)` plans a task with it (`ExpertConfig.miss_height`,
`miss_steps`, `miss_fraction`: the share of episodes that rehearse, the rest being honest picks from their first
step); `CollectConfig.miss_height` > 0 collects with it (`--tasks` picks the tasks)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from vla.expert import ScriptedExpert

__all__ = ["RehearsedMiss"]

CAUGHT_RISE = 0.015  # m the object rose since the miss's close: it is held, not missed


class RehearsedMiss(ScriptedExpert):
    """`ScriptedExpert` whose first grasp of each episode is a rehearsed miss (an object on the table or in a drawer).
    Per episode, drawn from the object's first position (so a demonstration depends only on its env seed): the
    height of the miss in [0.6, 1] x miss_height, the steps the empty grip is carried in [1, miss_steps], and whether
    the episode rehearses at all (with probability miss_fraction; else an honest pick, recorded from its first step)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.honest_cfg
        if not (cfg.miss_height > 0 and cfg.miss_steps >= 1 and 0 <= cfg.miss_fraction <= 1):
            raise ValueError(f"a rehearsed miss needs miss_height > 0, miss_steps >= 1 and 0 <= miss_fraction <= 1, "
                             f"got {cfg}")  # fmt: skip

    def reset(self) -> None:
        super().reset()
        self.rehearsing, self.carried, self.carry_steps, self.miss_height, self.missed_z = True, 0, None, 0.0, np.inf
        self.honest_cfg = getattr(self, "honest_cfg", self.cfg)
        # the miss is noticed by its step count, not by the grip leaving the object (lifting the empty grip 4 cm)
        self.cfg = replace(self.honest_cfg, drop_distance=np.inf)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.rehearsing:  # False from the first step on in an honest episode (miss_fraction)
            obj, eef = np.asarray(obs[f"{self.obj}_pos"], float), np.asarray(obs["robot0_eef_pos"], float)
            if self.carry_steps is None:
                rng = np.random.default_rng(int(np.abs(obj[:2] * 1e6).sum()) % 2**32)
                self.carry_steps = int(rng.integers(1, self.honest_cfg.miss_steps + 1))
                self.miss_height = self.honest_cfg.miss_height * rng.uniform(0.6, 1.0)
                if rng.uniform() >= self.honest_cfg.miss_fraction:  # drawn last: miss_fraction 1 keeps older episodes
                    self._end_rehearsal()  # an honest pick, recorded from its first action
            if self.phase == "descend" and eef[2] <= obj[2] + self.grasp_offset[2] + self.miss_height:
                self._next("close")  # on air
                self.missed_z = obj[2]
            if self.phase in ("lift", "carry", "lower"):
                self.carried += 1
                if obj[2] - self.missed_z > CAUGHT_RISE:  # the fingers caught the object after all: an honest pick
                    self._end_rehearsal()  # from here on (its drop check back on), recorded
                elif self.carried > self.carry_steps:
                    self._end_rehearsal()
                    self._retry()  # open, back off upwards, grasp again: the action returned below is recorded
        action = super().act(obs)
        if self.rehearsing and self.phase == "regrasp":  # a blocked descent retried before the miss
            self._end_rehearsal()
        return action

    def _end_rehearsal(self) -> None:
        self.rehearsing, self.cfg = False, self.honest_cfg

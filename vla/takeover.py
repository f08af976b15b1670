"""Demonstrations that start where a learner goes wrong (DAgger-style data, with the expert driving what is recorded).

DART noise and rehearsed misses (`vla.expert_rehearsal`) show the expert recovering from states the expert itself
reaches; a trained policy fails in states of its own: a VLA of docs/RESULTS.md stalls over the bowl with its fingers
at the rim, or carries an empty grip to the plate. `TakeoverPolicy` collects recoveries from exactly those states: in
each episode a learner (a VLA checkpoint) drives the first K steps, which are executed but not recorded; then the
scripted expert takes over from the state the learner left and finishes the task, recorded as usual (successes only,
`vla.demos`). K is drawn per episode from the objects' first positions (so an episode depends only on its env seed),
uniform in [min_steps, max_steps]; with probability 1 - fraction an episode has no learner part at all (an ordinary
demonstration).

The expert does not label the learner's own steps (DAgger proper would): a phase machine watching someone else's arm
has no plan to label them with. At the takeover it starts its pick from the observed scene, keeping the first
observation's home pose; an object the learner lifted (it rose `CAUGHT_RISE` since the first step, the rise by which
`RehearsedMiss` tells a held object) is treated as grasped: the expert closes (it already is) and goes on to lift,
carry and place, since opening would teach dropping.
An object pushed higher without a grip (onto the cookie box) fails the expert's drop check once the lift starts,
which sends it back to open and grasp again."""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.expert import ScriptedExpert, UnsupportedTaskError
from vla.expert_rehearsal import CAUGHT_RISE
from vla.libero_env import TaskInfo, upright
from vla.policies import ExpertPolicy, Observation, Policy

__all__ = ["TakeoverExpert", "TakeoverPolicy", "learner_steps"]


class TakeoverExpert(ScriptedExpert):
    """`ScriptedExpert` that watches the learner's steps (`act` keeps its bookkeeping, the caller discards the
    action) and `take_over(obs)` starts its own pick from the current scene."""

    def __init__(self, *args, **kwargs):
        self.first_z: float | None = None  # the object's height at the episode's first step
        super().__init__(*args, **kwargs)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.first_z is None:
            self.first_z = float(obs[f"{self.obj}_pos"][2])
        return super().act(obs)

    def take_over(self, obs: dict[str, np.ndarray]) -> None:
        """Forget the phases watched so far, keep the home pose and target of the first observation; an object the
        learner lifted is held: the close phase first (at the grip's current orientation), which ends once the
        fingers stop and then lifts."""
        home, target_name, first_z = self.home, self.target_name, self.first_z
        self.reset()
        self.home, self.target_name, self.first_z = home, target_name, first_z
        if first_z is not None and float(obs[f"{self.obj}_pos"][2]) - first_z > CAUGHT_RISE:
            self._next("close")
            self.quat = np.asarray(obs["robot0_eef_quat"], float)  # the grip's orientation stays (no grasp planned)


def learner_steps(obs: Observation, steps: tuple[int, int], fraction: float) -> int:
    """The steps the learner drives an episode that starts with `obs`: uniform in [steps[0], steps[1]] with
    probability `fraction`, else 0; drawn from the objects' first positions (reproducible from the env seed)."""
    positions = [np.ravel(v) for k, v in sorted(obs.items()) if k.endswith("_pos") and not k.startswith("robot")]
    seed = int(np.abs(np.concatenate(positions)).sum() * 1e6) % 2**32 if positions else 0
    rng = np.random.default_rng(seed)
    if rng.uniform() >= fraction:
        return 0
    return int(rng.integers(steps[0], steps[1] + 1))


class TakeoverPolicy:
    """The learner drives each episode's first `learner_steps(...)` steps (one batched call for every slot it
    drives), then the expert (`TakeoverExpert` per slot, built from the task's BDDL at reset) takes over.
    `rehearsing(slot)`: True when the last action of `slot` was the learner's, which the demonstration recorder
    executes without recording. The learner reads the raw agentview render: collection pools rotate the renders
    upright for the recording (`upright_cameras`), so they are rotated back for it."""

    cameras = ("agentview",)

    def __init__(self, learner: Policy, steps: tuple[int, int], fraction: float = 1.0,
                 expert: ExpertPolicy | None = None):  # fmt: skip
        if not 1 <= steps[0] <= steps[1] or not 0 <= fraction <= 1:
            raise ValueError(f"learner steps must satisfy 1 <= min <= max and fraction be in [0, 1], got {steps}, "
                             f"{fraction}")  # fmt: skip
        self.learner, self.steps, self.fraction = learner, steps, fraction
        self.expert = expert or ExpertPolicy(TakeoverExpert)
        self.last_frames = learner.last_frames
        self.driven: dict[int, int] = {}  # per slot: steps of this episode so far
        self.prefix: dict[int, int] = {}  # per slot: the steps its learner drives (drawn at the first step)
        self.counts = {"learner_steps": 0, "expert_steps": 0, "takeovers": 0, "held_at_takeover": 0}

    def reset(self, slot: int, task: TaskInfo) -> None:
        self.expert.reset(slot, task)
        if not hasattr(self.expert.experts[slot], "take_over"):
            raise UnsupportedTaskError(f"task {task.task_id} ({task.language}) is not a pick from above: the expert "
                                       "cannot take over from a learner there")  # fmt: skip
        self.learner.reset(slot, task)
        self.driven[slot] = 0
        self.prefix.pop(slot, None)

    def rehearsing(self, slot: int) -> bool:
        return self.driven.get(slot, 0) <= self.prefix.get(slot, 0)

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]:
        learner_slots = []
        for slot, obs in observations.items():
            if slot not in self.prefix:
                self.prefix[slot] = learner_steps(obs, self.steps, self.fraction)
            if self.driven[slot] < self.prefix[slot]:
                learner_slots.append(slot)
            elif self.driven[slot] == self.prefix[slot] > 0:
                expert = self.expert.experts[slot]
                expert.take_over(obs)
                self.counts["takeovers"] += 1
                self.counts["held_at_takeover"] += int(expert.phase == "close")
            self.driven[slot] += 1
        actions = self.expert.act(observations, instructions)  # watching slots too: the expert's bookkeeping
        if learner_slots:
            raw = {slot: {"agentview_image": upright(observations[slot]["image"])} for slot in learner_slots}
            actions.update(self.learner.act(raw, {slot: instructions[slot] for slot in learner_slots}))
        self.counts["learner_steps"] += len(learner_slots)
        self.counts["expert_steps"] += len(observations) - len(learner_slots)
        return actions

    def summary(self) -> dict[str, Any]:
        """What the learner and the expert did over the run."""
        return {"learner_steps_range": list(self.steps), "learner_fraction": self.fraction, **self.counts}

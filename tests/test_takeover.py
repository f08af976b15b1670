"""Learner takeover (vla.takeover): a VLA drives each episode's first steps, unrecorded; the scripted expert takes over
from where it left and only that is recorded."""

from __future__ import annotations

import numpy as np
import pytest
from test_demos import CLEAN, NEVER, SUCCEEDS, SUCCESS_STEP, FakeWriter, _cfg, _script
from test_demos import fake_collection as fake_collection  # noqa: F401  (the fixture)
from test_expert import _obs
from test_expert_rehearsal import ideal_arm

import vla.demos as demos
from vla.env_pool import ResetRequest
from vla.expert import plan_task
from vla.expert_rehearsal import CAUGHT_RISE
from vla.hub import CheckpointNotCachedError
from vla.takeover import TakeoverExpert, TakeoverPolicy, learner_steps

LEARNED = np.array([-0.3, 0.3, -0.3, 0.0, 0.0, 0.0, -1.0])
GOAL = [("on", "akita_black_bowl_1", "plate_1")]
ON_TABLE = [("on", "plate_1", "main_table_plate_region")]


class StubLearner:
    """Stands in for a VLAPolicy: LEARNED for every slot, each call's images kept."""

    cameras = ("agentview",)

    def __init__(self):
        self.last_frames, self.calls, self.resets = {}, [], 0

    def reset(self, slot, task):
        self.resets += 1

    def act(self, observations, instructions):
        self.calls.append({slot: obs["agentview_image"] for slot, obs in observations.items()})
        return {slot: LEARNED.copy() for slot in observations}


class StubTaker:
    phase = "approach"

    def __init__(self, action=CLEAN):
        self.watched, self.took_over_at, self.action = 0, None, action

    def take_over(self, obs):
        self.took_over_at = int(obs["robot0_eef_pos"][0])  # the fake env's step count

    def act(self, obs):
        self.watched += self.took_over_at is None
        return self.action.copy()


class StubExpertPolicy:
    """ExpertPolicy's interface over StubTakers (the real expert needs object poses the fake pool has not)."""

    def __init__(self):
        self.experts, self.all, self.action = {}, [], CLEAN

    def reset(self, slot, task):
        self.experts[slot] = StubTaker(self.action)
        self.all.append(self.experts[slot])

    def act(self, observations, instructions):
        return {slot: self.experts[slot].act(obs) for slot, obs in observations.items()}


def test_the_learner_drives_the_first_steps_unrecorded_and_the_expert_the_recorded_rest(tmp_path, fake_collection):
    learner, expert = StubLearner(), StubExpertPolicy()
    summary = demos.collect(_cfg(tmp_path), TakeoverPolicy(learner, (2, 2), expert=expert))
    pool, (writer,) = fake_collection[0], FakeWriter.instances
    # every episode: steps 0-1 the learner's (executed), from step 2 on the expert's; only the expert's recorded
    episodes, current = [], {}
    for worker, request in pool.requests:
        if isinstance(request, ResetRequest):
            current[worker] = []
            episodes.append(current[worker])
        else:
            current[worker].append(request)
    assert len(episodes) == 6
    for executed in episodes:
        np.testing.assert_array_equal(executed[:2], [LEARNED, LEARNED])
        np.testing.assert_array_equal(executed[2:], [CLEAN] * (len(executed) - 2))
    assert len(writer.episodes) == 3  # the task that succeeds, each with the expert's SUCCESS_STEP - 2 steps
    for episode in writer.episodes:
        np.testing.assert_array_equal(episode["action"], np.tile(CLEAN.astype(np.float32), (SUCCESS_STEP - 2, 1)))
        assert [int(image[1, 1, 0]) for image in episode["image"]] == [2, 3]  # the frames the expert acted on
    assert all(taker.took_over_at == 2 and taker.watched == 2 for taker in expert.all)
    # one learner call per step for every slot it drives, on the raw render (the marker back in the top-left pixel)
    assert max(len(call) for call in learner.calls) == 2 and sum(len(call) for call in learner.calls) == 12
    assert all(image[0, 0, 0] == 255 for call in learner.calls for image in call.values())
    assert learner.resets == 6
    assert summary["takeover"] | {} == {"learner_steps_range": [2, 2], "learner_fraction": 1.0, "learner_steps": 12,
                                        "expert_steps": sum(len(e) for e in episodes) - 12, "takeovers": 6,
                                        "held_at_takeover": 0}  # fmt: skip
    rows = {r["task_id"]: r for r in summary["tasks"]}
    assert (rows[SUCCEEDS]["successes"], rows[NEVER]["failures"], rows[SUCCEEDS]["unrecorded_successes"]) == (3, 3, 0)


def test_an_episode_the_learner_finishes_before_the_takeover_is_counted_not_written(tmp_path, fake_collection):
    summary = demos.collect(_cfg(tmp_path), TakeoverPolicy(StubLearner(), (5, 5), expert=StubExpertPolicy()))
    rows = {r["task_id"]: r for r in summary["tasks"]}
    assert rows[SUCCEEDS]["successes"] == rows[SUCCEEDS]["unrecorded_successes"] == 3
    assert FakeWriter.instances[0].episodes == [] and summary["takeover"]["takeovers"] == 3  # the other task's


def test_an_episode_whose_recorded_steps_are_all_no_ops_is_counted_not_written(tmp_path, fake_collection):
    # the learner leaves the task all but done and the expert's first phase holds still until it succeeds: every
    # recorded step is a no-op; the collection goes on (it once ended here, losing the whole store)
    expert = StubExpertPolicy()
    expert.action = np.array([0, 0, 0, 0, 0, 0, -1.0])
    summary = demos.collect(_cfg(tmp_path), TakeoverPolicy(StubLearner(), (2, 2), expert=expert))
    rows = {r["task_id"]: r for r in summary["tasks"]}
    assert rows[SUCCEEDS]["successes"] == rows[SUCCEEDS]["unrecorded_successes"] == 3
    assert FakeWriter.instances[0].episodes == [] and FakeWriter.instances[0].closed


def test_learner_steps_are_drawn_per_episode_from_the_first_positions():
    rng = np.random.default_rng(0)
    firsts = [{"robot0_eef_pos": np.zeros(3), "bowl_pos": rng.uniform(-0.3, 0.3, 3)} for _ in range(300)]
    drawn = [learner_steps(obs, (20, 120), 1.0) for obs in firsts]
    assert drawn == [learner_steps(obs, (20, 120), 1.0) for obs in firsts]  # reproducible
    assert min(drawn) >= 20 and max(drawn) <= 120 and len(set(drawn)) > 50  # spread over the range
    assert all(learner_steps(obs, (20, 120), 0.0) == 0 for obs in firsts)  # no learner part
    assert 0.35 < np.mean([learner_steps(obs, (20, 120), 0.5) == 0 for obs in firsts]) < 0.65
    robot_moved = {**firsts[0], "robot0_eef_pos": np.ones(3)}  # only the objects' positions seed the draw
    assert learner_steps(robot_moved, (20, 120), 1.0) == drawn[0]


def test_the_expert_takes_a_lifted_bowl_as_held_and_places_it_without_opening_on_the_way():
    expert = plan_task(GOAL, init=ON_TABLE, pick=TakeoverExpert)
    assert type(expert) is TakeoverExpert
    bowl = np.array([0.1, 0.2, 0.9])
    expert.act(_obs([-0.2, 0.0, 1.2], bowl))  # the learner's first step, watched: home pose and the bowl's height
    lifted = bowl + [0.0, 0.0, 2 * CAUGHT_RISE]
    expert.take_over(_obs(lifted + [0, 0, 0.02], lifted))
    assert expert.phase == "close"  # held: no release over the table
    eef = lifted + [0, 0, 0.02]
    trace, end = ideal_arm(expert, eef, lifted, obs=_obs, held=eef - lifted, steps=300)
    first_open = next(i for i, (action, *_) in enumerate(trace) if action[6] < 0)
    assert {phase for _, phase, *_ in trace[:first_open]} >= {"close", "lift", "carry", "lower"}
    assert trace[first_open][1] == "open" and np.linalg.norm(end[:2] - [0.1, -0.2]) < 0.02  # over the plate


def test_the_expert_takes_over_an_unlifted_bowl_from_the_approach_with_the_home_pose_of_the_first_step():
    expert = plan_task(GOAL, init=ON_TABLE, pick=TakeoverExpert)
    bowl = np.array([0.1, 0.2, 0.9])
    expert.act(_obs([-0.2, 0.0, 1.2], bowl))
    home = expert.home
    for _ in range(30):  # the learner's steps elsewhere: the expert's watched phases do not carry over
        expert.act(_obs([0.15, 0.25, 0.93], bowl))
    expert.take_over(_obs([0.15, 0.25, 0.93], bowl))
    assert expert.phase == "approach" and expert.home is home and expert.first_z == pytest.approx(0.9)
    assert expert.act(_obs([0.15, 0.25, 0.93], bowl))[6] == -1.0  # an empty grip at the rim: open, go back up


def test_config_checks_the_learner_before_anything_starts(tmp_path, monkeypatch):
    checkpoint = tmp_path / "vla"
    checkpoint.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        _cfg(tmp_path, learner_checkpoint=str(checkpoint), max_steps=400).validate()
    (checkpoint / "config.json").write_text("{}")
    _cfg(tmp_path, learner_checkpoint=str(checkpoint), max_steps=400).validate()
    with pytest.raises(ValueError, match="choose one"):
        _cfg(tmp_path, learner_checkpoint=str(checkpoint), max_steps=400, miss_height=0.12).validate()
    with pytest.raises(ValueError, match="learner_min_steps <= learner_max_steps"):
        _cfg(tmp_path, learner_checkpoint=str(checkpoint), max_steps=400, learner_min_steps=50,
             learner_max_steps=40).validate()  # fmt: skip
    with pytest.raises(ValueError, match="--max_steps 320"):
        _cfg(tmp_path, learner_checkpoint=str(checkpoint), max_steps=150).validate()
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        _cfg(tmp_path, learner_checkpoint=str(tmp_path / "missing"), max_steps=400).validate()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotCachedError, match="org/missing"):  # a hub id is taken, as eval.py takes it
        _cfg(tmp_path, learner_checkpoint="org/missing", max_steps=400).validate()


def test_collect_demos_cli_takes_the_learner_flags():
    cfg = _script().parse_args(["--learner_checkpoint", "ckpt", "--learner_min_steps", "20", "--learner_max_steps",
                                "120", "--learner_fraction", "0.5"])  # fmt: skip
    assert (cfg.learner_checkpoint, cfg.learner_min_steps, cfg.learner_max_steps, cfg.learner_fraction) == (
        "ckpt", 20, 120, 0.5)  # fmt: skip


@pytest.mark.libero
@pytest.mark.slow
def test_collect_with_a_learner_in_libero(tmp_path, libero_assets_dir, official_checkpoint):
    """libero_spatial task 0 with a tiny random VLA as the learner for its first 5 steps: the learner's steps ran
    (rendered agentview, batch of one), the expert took over and succeeded, and only its part was recorded."""
    from vla.frame_store import read_store_episodes, read_store_index

    cfg = demos.CollectConfig(task_suite="libero_spatial", tasks=[0], episodes_per_task=1, seed=700, num_workers=1,
                              out=str(tmp_path / "demos"), format="frames", max_steps=330, libero_assets=libero_assets_dir,
                              learner_checkpoint=str(official_checkpoint[0]), learner_min_steps=5,
                              learner_max_steps=5)  # fmt: skip
    summary = demos.collect(cfg)
    row = summary["tasks"][0]
    assert row["successes"] == row["attempts"] == 1
    assert summary["takeover"]["learner_steps"] == 5 and summary["takeover"]["takeovers"] == 1
    store = tmp_path / "demos" / "libero_spatial_no_noops"
    ((_, images, actions, _),) = list(read_store_episodes(store, read_store_index(store)))
    assert len(actions) == row["mean_kept_steps"] == len(images) and row["mean_steps"] == summary["timing"]["steps"] - 5


def test_a_task_that_is_no_pick_from_above_is_refused_at_reset(tmp_path):
    from test_expert import BDDL

    from vla.expert import UnsupportedTaskError
    from vla.libero_env import TaskInfo

    pick, rim = tmp_path / "pick.bddl", tmp_path / "rim.bddl"
    pick.write_text(BDDL)
    rim.write_text(BDDL.replace("(On akita_black_bowl_1 plate_1)", "(On plate_1 main_table_plate_region)"))
    policy = TakeoverPolicy(StubLearner(), (5, 10))
    policy.reset(0, TaskInfo(0, "pick", "put the bowl on the plate", str(pick)))
    assert type(policy.expert.experts[0]) is TakeoverExpert
    with pytest.raises(UnsupportedTaskError, match="not a pick from above"):
        policy.reset(1, TaskInfo(1, "rim", "push the plate", str(rim)))

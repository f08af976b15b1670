"""Rehearsed misses (vla.expert_rehearsal): a pick whose first grasp closes on air, carries the empty grip, then
recovers; the demonstration recorder keeps only the recovery."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from test_expert import BDDL, _obs

from vla.demos import CollectConfig, _DemoRecorder
from vla.expert import ExpertConfig, ScriptedExpert, plan_task
from vla.expert_rehearsal import RehearsedMiss
from vla.policies import ExpertPolicy

DRAWER = "wooden_cabinet_1_top_region"
INIT = [("in", "akita_black_bowl_1", DRAWER), ("on", "plate_1", "main_table_plate_region")]
GOAL = [("on", "akita_black_bowl_1", "plate_1")]


def _drawer_obs(eef, bowl, plate=(0.1, -0.25, 0.9)):
    return {**_obs(eef, bowl, plate), f"{DRAWER}_pos": np.array([0.1, 0.0, 1.09])}


def ideal_arm(expert, eef, bowl, *, obs=_drawer_obs, held=None, steps=400, catch=0.01):
    """An ideal arm (5 cm x action a step) that carries the bowl while it holds it: from the start with `held` (eef
    minus bowl), else once the gripper closed within `catch` (m) of the grasp point; until the expert retreats.
    Each step's (action, phase, rehearsing, eef), and where the bowl ended."""
    eef, bowl, trace = np.array(eef, float), np.array(bowl, float), []
    for _ in range(steps):
        action = expert.act(obs(eef, bowl))
        trace.append((action, expert.phase, getattr(expert, "rehearsing", False), eef.copy()))
        if expert.phase == "close" and held is None and np.linalg.norm(eef - bowl - expert.grasp_offset) < catch:
            held = eef - bowl
        if action[6] < 0:
            held = None  # opened
        eef = eef + 0.05 * 0.5 * action[:3]
        if held is not None:
            bowl = eef - held
        if expert.phase == "retreat":
            break
    return trace, bowl


def _run(expert, bowl=(0.1, 0.0, 1.06), steps=400, catch=0.01):
    """`ideal_arm` from above the table: each step's (phase, rehearsing, eef), and where the bowl ended."""
    trace, bowl = ideal_arm(expert, [-0.2, 0.0, 1.2], bowl, steps=steps, catch=catch)
    return [step[1:] for step in trace], bowl


def test_plan_task_rehearses_misses_when_asked(tmp_path):
    assert type(plan_task(GOAL, init=INIT)) is ScriptedExpert  # off by default
    assert type(plan_task(GOAL, init=INIT, pick=RehearsedMiss)) is RehearsedMiss  # the bowl in the drawer
    assert type(plan_task(GOAL, init=INIT[1:], pick=RehearsedMiss)) is RehearsedMiss  # ... and on the table
    rim = plan_task([("on", "plate_1", "main_table_plate_region")], pick=RehearsedMiss)
    assert type(rim) is ScriptedExpert and rim.rim  # a rim pinch is no grasp from above: never rehearsed
    bddl = tmp_path / "task.bddl"
    bddl.write_text(BDDL.replace("(On akita_black_bowl_1 main_table_region)", f"(In akita_black_bowl_1 {DRAWER})"))
    assert (
        type(RehearsedMiss.from_bddl(bddl)) is RehearsedMiss and type(ScriptedExpert.from_bddl(bddl)) is ScriptedExpert
    )
    with pytest.raises(ValueError, match="miss_height > 0"):
        RehearsedMiss.from_bddl(bddl, config=ExpertConfig(miss_height=0.0))


@pytest.mark.parametrize("init, bowl_z", [(INIT, 1.06), (INIT[1:], 0.9)], ids=["in the drawer", "on the table"])
def test_a_rehearsed_miss_closes_on_air_carries_the_empty_grip_then_recovers_and_places(init, bowl_z):
    config = ExpertConfig(miss_height=0.05, miss_steps=20)
    expert = plan_task(GOAL, init=init, config=config, pick=RehearsedMiss)
    trace, bowl = _run(expert, bowl=(0.1, 0.0, bowl_z))
    phases = [p for i, (p, _, _) in enumerate(trace) if i == 0 or trace[i - 1][0] != p]
    assert phases[:4] == ["approach", "descend", "close", "lift"]
    assert phases[-6:] == ["close", "lift", "carry", "lower", "open", "retreat"]  # the second, honest grasp
    assert "regrasp" in phases
    miss = [eef for phase, flag, eef in trace if phase == "close" and flag]
    assert miss and min(e[2] for e in miss) >= bowl_z + expert.grasp_offset[2] + 0.6 * 0.05 - 0.01  # on air
    flags = [flag for _, flag, _ in trace]
    first_honest = flags.index(False)
    assert all(flags[:first_honest]) and not any(flags[first_honest:])  # one rehearsal, then only the recovery
    assert trace[first_honest][0] == "regrasp"
    empty_carry = sum(phase in ("lift", "carry", "lower") and flag for phase, flag, _ in trace)
    assert 1 <= empty_carry <= config.miss_steps
    np.testing.assert_allclose(bowl[:2], [0.1, -0.25], atol=0.015)  # placed on the plate after all
    # the same episode (the same first position) rehearses the same miss
    again, _ = _run(plan_task(GOAL, init=init, config=config, pick=RehearsedMiss), bowl=(0.1, 0.0, bowl_z))
    assert [(p, f) for p, f, _ in again] == [(p, f) for p, f, _ in trace]
    expert.reset()
    assert expert.rehearsing and expert.cfg.drop_distance == np.inf and expert.honest_cfg.drop_distance == 0.04


def test_miss_fraction_makes_that_share_of_episodes_rehearse_and_the_rest_pick_honestly_from_their_first_step():
    def first_step(fraction, bowl):
        expert = plan_task(GOAL, init=INIT[1:], config=ExpertConfig(miss_height=0.05, miss_fraction=fraction),
                           pick=RehearsedMiss)  # fmt: skip
        expert.act(_drawer_obs(np.array([-0.2, 0.0, 1.2]), np.array(bowl)))
        return expert

    bowls = [(0.1 + 0.003 * i, 0.01 * (i % 7), 0.9) for i in range(200)]  # 200 episodes' first positions
    assert all(first_step(1.0, b).rehearsing for b in bowls) and not any(first_step(0.0, b).rehearsing for b in bowls)
    flags = [first_step(0.3, b).rehearsing for b in bowls]
    assert 0.2 < np.mean(flags) < 0.4  # drawn per episode ...
    assert flags == [first_step(0.3, b).rehearsing for b in bowls]  # ... from its first position: reproducible
    honest = first_step(0.0, bowls[0])
    assert honest.cfg.drop_distance == 0.04  # the honest pick keeps its drop check
    trace, bowl = _run(plan_task(GOAL, init=INIT[1:], config=ExpertConfig(miss_height=0.05, miss_fraction=0.0),
                                 pick=RehearsedMiss), bowl=(0.1, 0.0, 0.9))  # fmt: skip
    assert not any(flag for _, flag, _ in trace) and "regrasp" not in [p for p, _, _ in trace]
    np.testing.assert_allclose(bowl[:2], [0.1, -0.25], atol=0.015)
    with pytest.raises(ValueError, match="miss_fraction"):
        plan_task(GOAL, init=INIT, config=ExpertConfig(miss_fraction=1.5), pick=RehearsedMiss)


def test_a_miss_that_catches_the_object_after_all_goes_on_as_an_honest_pick():
    """Fingers that close a few cm above the grasp point may still catch the bowl (in LIBERO at 3.6-6 cm: 7 of 10
    episodes): opening that grip to "recover" would teach dropping a held bowl, so the pick goes on (and is recorded)
    from the moment the bowl rises with the grip."""
    config = ExpertConfig(miss_height=0.05, miss_steps=40)
    expert = plan_task(GOAL, init=INIT, config=config, pick=RehearsedMiss)
    trace, bowl = _run(expert, catch=0.1)  # every close holds the bowl
    phases = [p for i, (p, _, _) in enumerate(trace) if i == 0 or trace[i - 1][0] != p]
    assert phases == ["approach", "descend", "close", "lift", "carry", "lower", "open", "retreat"]  # no regrasp
    flags = [flag for _, flag, _ in trace]
    first_honest = flags.index(False)
    assert all(flags[:first_honest]) and not any(flags[first_honest:]) and trace[first_honest][0] == "lift"
    assert expert.cfg.drop_distance == 0.04  # the drop check is back for the rest of the pick
    np.testing.assert_allclose(bowl[:2], [0.1, -0.25], atol=0.015)


def test_the_recorder_executes_rehearsed_actions_without_recording_them():
    skipped = {"now": True}
    recorder = _DemoRecorder(0.1, skip=lambda slot: skipped["now"])
    obs = {"image": np.zeros((4, 4, 3), np.uint8), "robot0_joint_pos": np.zeros(7), "robot0_eef_pos": np.zeros(3),
           "robot0_eef_quat": np.array([1.0, 0, 0, 0]), "robot0_gripper_qpos": np.zeros(2)}  # fmt: skip
    ep = SimpleNamespace(obs=obs, data={}, slot=0, job=SimpleNamespace(request=SimpleNamespace(seed=3)))
    action = np.array([0.5, 0, 0, 0, 0, 0, -1.0])
    executed = recorder(ep, action)
    assert "frames" not in ep.data and not np.allclose(executed[:3], action[:3])  # noised, not recorded
    skipped["now"] = False
    recorder(ep, action)
    assert len(ep.data["frames"]["action"]) == 1 and np.array_equal(ep.data["frames"]["action"][0], action)


def test_the_expert_policy_reports_its_slots_rehearsals(tmp_path):
    policy = ExpertPolicy(RehearsedMiss, config=ExpertConfig(miss_height=0.05))
    assert not policy.rehearsing(0)  # no expert yet
    policy.experts[0] = plan_task(GOAL, init=INIT, pick=RehearsedMiss)
    policy.experts[1] = plan_task(GOAL, init=INIT)
    assert policy.rehearsing(0) and not policy.rehearsing(1)
    policy.experts[3] = plan_task([("turnon", "flat_stove_1"), *GOAL], init=INIT, pick=RehearsedMiss)  # a sequence
    assert not policy.rehearsing(3)  # its knob skill first
    policy.experts[3].index = 1
    assert policy.rehearsing(3)  # then the pick, which rehearses a miss
    bddl = tmp_path / "task.bddl"
    bddl.write_text(BDDL.replace("(On akita_black_bowl_1 main_table_region)", f"(In akita_black_bowl_1 {DRAWER})"))
    policy.reset(2, SimpleNamespace(bddl_file=bddl))  # what the scheduler calls at each episode's start
    assert type(policy.experts[2]) is RehearsedMiss and policy.experts[2].cfg.drop_distance == np.inf
    with pytest.raises(ValueError, match="miss_height"):
        CollectConfig(miss_height=-0.01, out=str(tmp_path / "x")).validate()
    with pytest.raises(ValueError, match="miss_fraction in"):
        CollectConfig(miss_height=0.1, miss_fraction=-0.5, out=str(tmp_path / "x")).validate()


@pytest.mark.libero
@pytest.mark.slow
def test_collect_records_only_the_recovery_of_a_rehearsed_miss_in_libero(tmp_path, libero_assets_dir):
    """libero_spatial task 4 (the bowl in the top drawer) collected with a rehearsed miss, as the frame store the
    learning proof trains on: the episode succeeds, its first recorded action opens the empty grip (the recovery
    starts), and the miss's steps ran but were not recorded."""
    from vla.demos import collect
    from vla.frame_store import read_store_episodes, read_store_index

    cfg = CollectConfig(task_suite="libero_spatial", tasks=[4], episodes_per_task=1, seed=320, num_workers=1,
                        out=str(tmp_path), format="frames", miss_height=0.12, max_steps=320,
                        libero_assets=libero_assets_dir)  # fmt: skip
    summary = collect(cfg)
    row = summary["tasks"][0]
    assert row["successes"] == row["attempts"] == 1
    store = tmp_path / "libero_spatial_no_noops"
    ((_, images, actions, _),) = list(read_store_episodes(store, read_store_index(store)))
    assert len(actions) == row["mean_kept_steps"] == len(images)
    assert actions[0, 6] == -1.0 and actions[0, 2] >= 0  # open, not down: the grip backs off the miss
    assert summary["timing"]["steps"] >= row["mean_steps"] + 20  # the miss ran (approach, descent, close, carry)

"""Teacher-forced agreement (vla/agreement.py, scripts/check_agreement.py): the lead's actions are executed, the
shadow's are only recorded, and the per-task table is the arithmetic it claims; on a fake env pool."""

import json
import math

import numpy as np
import pytest
from scripts_loader import load_script
from test_evaluation import _cfg, fake_libero  # noqa: F401  (fake_libero: the harness on FakePool)

from vla.agreement import ShadowPolicy, agreement, format_agreement
from vla.evaluation import EvalConfig, evaluate
from vla.libero_env import TaskInfo

LEAD = np.array([1.0, 0, 0, 0, 0, 0, 1])  # +x, gripper closed
SHADOW = np.array([0.5, 0.5, 0, 0.3, 0, 0, -1])  # 45 degrees off in xy, a rotation, gripper open


class Constant:
    """The same action for every slot; remembers the slots it was reset for."""

    cameras = ("agentview",)

    def __init__(self, action):
        self.action, self.last_frames, self.resets = np.asarray(action, float), {}, []

    def reset(self, slot, task):
        self.resets.append((slot, task.task_id))

    def act(self, observations, instructions):
        return {slot: self.action.copy() for slot in observations}


def test_the_lead_acts_and_the_shadow_is_only_recorded():
    lead, shadow = Constant(LEAD), Constant(SHADOW)
    policy = ShadowPolicy(lead, shadow)
    policy.reset(3, TaskInfo(5, "t", "do it", "/x.bddl"))
    actions = policy.act({3: {"agentview_image": np.zeros((8, 8, 3), np.uint8)}}, {3: "do it"})
    assert lead.resets == shadow.resets == [(3, 5)]
    np.testing.assert_array_equal(actions[3], LEAD)
    assert policy.records == [{"task_id": 5, "lead": LEAD.tolist(), "shadow": SHADOW.tolist()}]


def test_the_table_is_cosine_l1_and_gripper_agreement_per_task():
    records = [{"task_id": 0, "lead": LEAD.tolist(), "shadow": SHADOW.tolist()}] * 3
    records += [{"task_id": 1, "lead": LEAD.tolist(), "shadow": LEAD.tolist()}]
    records += [{"task_id": 1, "lead": [0.05, 0, 0, 0, 0, 0, 1], "shadow": [-1, 0, 0, 0, 0, 0, 1]}]  # not moving
    table = agreement(records)
    assert table[0]["steps"] == 3
    assert table[0]["xyz_cosine"] == pytest.approx(math.cos(math.pi / 4))
    assert table[0]["xyz_l1"] == pytest.approx(1.0 / 3) and table[0]["rot_l1"] == pytest.approx(0.1)
    assert table[0]["gripper"] == 0.0
    # task 1: the still step is left out of the cosine (it would be -1), not out of the L1 and the gripper
    assert table[1]["xyz_cosine"] == pytest.approx(1.0)
    assert table[1]["xyz_l1"] == pytest.approx(1.05 / 6) and table[1]["gripper"] == 1.0
    assert math.isnan(agreement(records[-1:])[1]["xyz_cosine"])
    assert format_agreement(table).splitlines()[1].split() == ["0", "3", "0.707", "0.333", "0.100", "0.000"]


def test_every_policy_step_of_an_evaluation_is_recorded_once(tmp_path, fake_libero):  # noqa: F811
    policy = ShadowPolicy(Constant(LEAD), Constant(SHADOW))
    summary = evaluate(_cfg(tmp_path, policy="expert", max_steps=4, tasks=[1]), policy)  # task 1 never succeeds
    assert summary["this_session"]["policy_steps"] == len(policy.records) == 2 * 4
    assert {r["task_id"] for r in policy.records} == {1}
    assert fake_libero[0].cameras == ("agentview",)  # the shadow's camera is rendered, though the lead reads none


def test_the_script_records_the_expert_and_writes_the_table(tmp_path, fake_libero, official_checkpoint, monkeypatch):  # noqa: F811
    checkpoint = str(official_checkpoint[0])
    script = load_script("check_agreement")
    monkeypatch.setattr(script, "ExpertPolicy", lambda: Constant(LEAD))  # the fake tasks have no BDDL goal
    out = tmp_path / "agreement"
    cfg = EvalConfig(checkpoint=checkpoint, num_trials_per_task=1, max_steps=3, num_envs=2, tasks=[1],
                     out_dir=str(out), center_crop=True)  # fmt: skip
    table = script.main(cfg)
    saved = json.loads((out / "agreement.json").read_text())
    assert (
        saved["checkpoint"] == checkpoint
        and len(saved["steps"]) == table[1]["steps"] == saved["agreement"]["1"]["steps"] == 3
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "expert" and summary["checkpoint"] is None  # the episodes are the expert's
    with pytest.raises(ValueError, match="agreement is of a VLA"):
        script.main(EvalConfig(policy="random", out_dir=str(tmp_path / "r")))
    with pytest.raises(ValueError, match="does not resume"):
        script.main(EvalConfig(checkpoint=checkpoint, out_dir=str(out), resume=True))


def test_the_shadow_warms_up_and_its_timers_and_worker_images_reach_the_harness():
    from vla.libero_io import WorkerImages

    class Warming(Constant):
        def __init__(self, action):
            super().__init__(action)
            self.warmed, self.timing = [], {"model_s": 1.5}
            self.worker_images = WorkerImages(center_crop=True)

        def warm_up(self, instructions, max_batch):
            self.warmed.append((instructions, max_batch))

    shadow = Warming(SHADOW)
    policy = ShadowPolicy(Constant(LEAD), shadow)
    policy.warm_up(["do it"], 4)
    assert shadow.warmed == [(["do it"], 4)] and policy.timing == {"model_s": 1.5}
    assert policy.worker_images == WorkerImages(center_crop=True)  # the pool prepares the shadow's images
    assert ShadowPolicy(Constant(LEAD), Constant(SHADOW)).worker_images is None
    ShadowPolicy(Constant(LEAD), Constant(SHADOW)).warm_up(["do it"], 4)  # a shadow without warm-up: nothing to do

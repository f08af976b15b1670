"""The eval harness on a fake env pool (no simulator): scheduling, statuses, errors kept apart, JSONL, resume; and the
policies. The real-simulator runs are the `libero`-marked tests at the end."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scripts_loader import load_script

import vla.env_pool as env_pool
import vla.evaluation as evaluation
from vla.env_pool import ResetRequest, StepResult
from vla.eval_cli import parse
from vla.evaluation import EvalConfig, evaluate, format_table, read_episodes, report, wilson_interval
from vla.libero_env import TaskInfo
from vla.policies import ExpertPolicy, RandomPolicy, VLAPolicy

# Fake tasks: how each behaves in FakePool.
SUCCEEDS, NEVER, ENV_ERROR, RESET_ERROR = 0, 1, 2, 3
SUCCESS_STEP, ERROR_STEP = 3, 2
TASKS = [TaskInfo(i, f"task_{i}", f"do thing {i}", f"/nonexistent/{i}.bddl") for i in range(4)]


class FakePool:
    """Stands in for `EnvPool`: task SUCCEEDS reports done at step SUCCESS_STEP, NEVER never does, ENV_ERROR returns
    a worker traceback at step ERROR_STEP, RESET_ERROR fails its reset. `receive` hands back at most `per_receive`
    results (None: all in flight), lowest worker first; `events` logs ("send", worker, kind) and ("recv", workers)."""

    instances: list["FakePool"] = []
    per_receive: int | None = None

    def __init__(self, suite, num_workers, *, assets_dir=None, cameras=(), gl_envs=None, hard_reset=False,
                 obs_transform=None, answer_pipe_bytes=None):  # fmt: skip
        self.num_workers, self.cameras, self.gl_envs, self.hard_reset = num_workers, cameras, gl_envs, hard_reset
        self.obs_transform = obs_transform
        self.resets: list[dict[int, ResetRequest]] = []
        self.steps: list[int] = []
        self.state: dict[int, list[int]] = {}
        self.pending: dict[int, StepResult] = {}
        self.events: list[tuple] = []
        self.closed = False
        FakePool.instances.append(self)

    def _obs(self, w):
        task_id, t = self.state[w]
        obs = {"task_id": np.array(task_id), "t": np.array(t), "agentview_image": np.full((32, 32, 3), t, np.uint8)}
        return obs if self.obs_transform is None else self.obs_transform(obs)

    def send(self, w, request):
        assert w not in self.pending, "a second request to a busy worker"
        if isinstance(request, ResetRequest):
            self.events.append(("send", w, "reset"))
            self.resets.append({w: request})
            if request.task_id == RESET_ERROR:
                self.pending[w] = StepResult(error="Traceback (most recent call last):\nRuntimeError: bad init state")
                return
            self.state[w] = [request.task_id, 0]
            self.pending[w] = StepResult(obs=self._obs(w), worker_s=0.5)
            return
        self.events.append(("send", w, "step"))
        assert np.asarray(request).shape == (7,)
        self.steps.append(w)
        self.state[w][1] += 1
        task_id, t = self.state[w]
        if task_id == ENV_ERROR and t == ERROR_STEP:
            self.pending[w] = StepResult(error="Traceback (most recent call last):\nValueError: physics exploded")
        else:
            done = task_id == SUCCEEDS and t == SUCCESS_STEP
            self.pending[w] = StepResult(obs=self._obs(w), reward=float(done), done=done, worker_s=0.25)

    def receive(self, timeout=None):
        ready = sorted(self.pending)[: self.per_receive]
        self.events.append(("recv", ready))
        return {w: self.pending.pop(w) for w in ready}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


@pytest.fixture
def fake_libero(monkeypatch):
    """Point the harness at FakePool and the fake tasks; init state i of task t is the row [t, i]."""
    FakePool.instances = []
    monkeypatch.setattr(env_pool, "EnvPool", FakePool)
    monkeypatch.setattr(env_pool, "check_gl", lambda env: None)
    monkeypatch.setattr(evaluation, "setup_libero", lambda assets_dir=None: None)
    monkeypatch.setattr(evaluation, "list_tasks", lambda suite: TASKS)
    monkeypatch.setattr(
        evaluation, "load_init_states", lambda suite, t: np.stack([np.full(50, t), np.arange(50)], axis=1)
    )
    return FakePool.instances


class RecordingPolicy(RandomPolicy):
    """Random actions; records each `act` call's slots; raises inside `act` for instructions in `raise_for`."""

    def __init__(self, raise_for=(), interrupt_after=None):
        super().__init__(seed=0)
        self.calls: list[list[int]] = []
        self.raise_for, self.interrupt_after = set(raise_for), interrupt_after
        self.resets: list[tuple[int, int]] = []

    def reset(self, slot, task):
        self.resets.append((slot, task.task_id))

    def act(self, observations, instructions):
        self.calls.append(sorted(observations))
        if self.interrupt_after is not None and len(self.calls) > self.interrupt_after:
            raise KeyboardInterrupt
        hit = self.raise_for & set(instructions.values())
        if hit:
            raise ValueError(f"boom on {sorted(hit)}")
        return super().act(observations, instructions)


def _cfg(tmp_path, **kwargs):
    defaults = {"policy": "random", "num_trials_per_task": 2, "max_steps": 5, "num_envs": 2, "out_dir": str(tmp_path)}
    return EvalConfig(**{**defaults, **kwargs})


def _by_key(tmp_path):
    return {(r["task_id"], r["episode"]): r for r in read_episodes(tmp_path / "episodes.jsonl")}


def test_wilson_interval_textbook_values():
    assert wilson_interval(0, 0) is None
    np.testing.assert_allclose(wilson_interval(5, 10), (0.2366, 0.7634), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.2775), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(10, 10), (0.7225, 1.0), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(45, 50), (0.7864, 0.9565), atol=1e-4)


def test_statuses_steps_and_errors_are_kept_apart(tmp_path, fake_libero):
    summary = evaluate(_cfg(tmp_path), RecordingPolicy())
    records = _by_key(tmp_path)
    assert set(records) == {(t, e) for t in range(4) for e in range(2)}
    for e in range(2):
        assert records[SUCCEEDS, e]["status"] == "success" and records[SUCCEEDS, e]["steps"] == SUCCESS_STEP
        assert records[NEVER, e]["status"] == "failure" and records[NEVER, e]["steps"] == 5
        assert records[ENV_ERROR, e]["status"] == "error" and records[ENV_ERROR, e]["steps"] == ERROR_STEP
        assert "physics exploded" in records[ENV_ERROR, e]["error"]
        assert records[RESET_ERROR, e]["status"] == "error" and "bad init state" in records[RESET_ERROR, e]["error"]
        assert records[SUCCEEDS, e]["success"] and not records[NEVER, e]["success"]
        assert records[SUCCEEDS, e]["error"] is None and records[SUCCEEDS, e]["task"] == "do thing 0"
    overall = summary["overall"]
    assert (overall["successes"], overall["failures"], overall["errors"], overall["trials"]) == (2, 2, 4, 4)
    assert overall["success_rate"] == 0.5
    per_task = {t["task_id"]: t for t in summary["tasks"]}
    assert per_task[ENV_ERROR]["trials"] == 0 and per_task[ENV_ERROR]["success_rate"] is None
    assert per_task[ENV_ERROR]["errors"] == 2 and per_task[SUCCEEDS]["success_rate"] == 1.0
    assert summary["complete"] and summary["episodes_recorded"] == 8
    assert json.loads((tmp_path / "summary.json").read_text())["overall"]["errors"] == 4
    table = format_table(summary)
    assert "errors" in table and "do thing 3" in table
    assert fake_libero[0].closed and fake_libero[0].cameras == ()  # the random policy needs no images
    assert not fake_libero[0].hard_reset  # robosuite's soft reset unless --hard_reset true


def test_hard_reset_reaches_the_simulation_workers(tmp_path, fake_libero):
    evaluate(_cfg(tmp_path, hard_reset=True), RecordingPolicy())
    assert fake_libero[0].hard_reset


class EventPolicy(RecordingPolicy):
    """RecordingPolicy that also logs its calls into the pool's event stream."""

    def act(self, observations, instructions):
        FakePool.instances[-1].events.append(("act", sorted(observations)))
        return super().act(observations, instructions)


def _check_every_waiting_env_is_in_the_next_act(events):
    """After each receive, the next policy call covers exactly the received envs whose episode goes on: any other
    received worker is finished (its next request is a reset, or it gets none)."""
    for k, event in enumerate(events):
        if event[0] != "recv" or not event[1]:
            continue
        later = events[k + 1 :]
        until_next_recv = later[: next((i for i, e in enumerate(later) if e[0] == "recv"), len(later))]
        act = next((e[1] for e in until_next_recv if e[0] == "act"), [])
        assert set(act) <= set(event[1])
        for w in set(event[1]) - set(act):
            nxt = next((e for e in later if e[0] == "send" and e[1] == w), None)
            assert nxt is None or nxt[2] == "reset", (w, event, later[:5])


@pytest.mark.parametrize("per_receive", [None, 1])
def test_one_batched_act_for_all_waiting_envs_and_fixed_initial_states(tmp_path, fake_libero, monkeypatch, per_receive):
    monkeypatch.setattr(FakePool, "per_receive", per_receive)
    policy = EventPolicy()
    summary = evaluate(_cfg(tmp_path, tasks=[SUCCEEDS, NEVER], num_trials_per_task=3, num_envs=3), policy)
    pool = fake_libero[0]
    _check_every_waiting_env_is_in_the_next_act(pool.events)
    assert sum(len(c) for c in policy.calls) == len(pool.steps)  # one action per step sent, no more
    assert max(len(c) for c in policy.calls) == (3 if per_receive is None else 1)  # all ready envs in one call
    requests = [r for batch in pool.resets for r in batch.values()]
    assert sorted((int(r.init_state[0]), int(r.init_state[1])) for r in requests) == [
        (t, e) for t in (SUCCEEDS, NEVER) for e in range(3)
    ]
    assert all(r.init_state[0] == r.task_id and r.seed == 0 and r.settle for r in requests)
    assert sorted(policy.resets) != [] and all(slot in (0, 1, 2) for slot, _ in policy.resets)
    records = _by_key(tmp_path)
    assert [records[SUCCEEDS, e]["steps"] for e in range(3)] == [SUCCESS_STEP] * 3  # outcomes as in lockstep
    assert [records[NEVER, e]["status"] for e in range(3)] == ["failure"] * 3
    timing = summary["timing"]
    assert timing["steps"] == len(pool.steps) == sum(r["steps"] for r in records.values())
    assert timing["policy_calls"] == len(policy.calls) and timing["resets"] == 6
    assert timing["env_step_s"] == pytest.approx(0.25 * len(pool.steps)) and timing["env_reset_s"] == 3.0


def test_the_timing_so_far_is_logged_while_the_run_goes(tmp_path, fake_libero, monkeypatch, caplog):
    import vla.env_scheduler

    monkeypatch.setattr(vla.env_scheduler, "PROGRESS_LOG_S", 0.0)  # every turn of the loop
    with caplog.at_level("INFO", logger="vla.env_scheduler"):
        evaluate(_cfg(tmp_path, tasks=[NEVER], num_trials_per_task=2, num_envs=2), RecordingPolicy())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("so far, timing:")]
    assert len(lines) >= 5 and "steps in" in lines[-1] and "resets" in lines[-1]
    steps = [int(line.split("timing: ")[1].split(" steps")[0]) for line in lines]
    assert steps == sorted(steps) and steps[-1] > 0  # the counts grow as the run goes


def test_a_policy_that_warms_up_gets_the_instructions_and_envs_before_the_first_step(tmp_path, fake_libero):
    class WarmPolicy(RecordingPolicy):
        warmed = None

        def warm_up(self, instructions, max_batch):
            assert not self.calls  # before any action
            self.warmed = (instructions, max_batch)

    policy = WarmPolicy()
    evaluate(_cfg(tmp_path, tasks=[SUCCEEDS, NEVER], num_trials_per_task=2, num_envs=3), policy)
    assert policy.warmed == (["do thing 0", "do thing 1"], 3) and policy.calls


def test_a_policy_exception_is_an_error_with_traceback_and_the_run_goes_on(tmp_path, fake_libero):
    policy = RecordingPolicy(raise_for={"do thing 1"})
    summary = evaluate(_cfg(tmp_path, tasks=[SUCCEEDS, NEVER], num_envs=1), policy)
    records = _by_key(tmp_path)
    assert [records[NEVER, e]["status"] for e in range(2)] == ["error", "error"]
    assert "Traceback" in records[NEVER, 0]["error"] and "ValueError: boom" in records[NEVER, 0]["error"]
    assert [records[SUCCEEDS, e]["status"] for e in range(2)] == ["success", "success"]
    assert summary["overall"]["errors"] == 2 and summary["overall"]["failures"] == 0


def test_resume_skips_recorded_episodes(tmp_path, fake_libero):
    evaluate(_cfg(tmp_path, tasks=[SUCCEEDS, NEVER], num_trials_per_task=1), RecordingPolicy())
    with pytest.raises(FileExistsError, match="resume"):
        evaluate(_cfg(tmp_path, tasks=[SUCCEEDS, NEVER], num_trials_per_task=2), RecordingPolicy())
    summary = evaluate(_cfg(tmp_path, tasks=[SUCCEEDS, NEVER], num_trials_per_task=2, resume=True), RecordingPolicy())
    second = [(r.task_id, int(r.init_state[1])) for batch in fake_libero[-1].resets for r in batch.values()]
    assert sorted(second) == [(SUCCEEDS, 1), (NEVER, 1)]
    assert len(read_episodes(tmp_path / "episodes.jsonl")) == 4 and summary["complete"]
    n_pools = len(fake_libero)
    evaluate(_cfg(tmp_path, tasks=[SUCCEEDS, NEVER], num_trials_per_task=2, resume=True), RecordingPolicy())
    assert len(fake_libero) == n_pools  # nothing left to run: no workers started
    with pytest.raises(ValueError, match="max_steps"):
        evaluate(_cfg(tmp_path, tasks=[SUCCEEDS], max_steps=9, resume=True), RecordingPolicy())


def test_a_crash_loses_no_finished_episode_and_resume_completes(tmp_path, fake_libero):
    cfg = _cfg(tmp_path, tasks=[SUCCEEDS], num_trials_per_task=3, num_envs=1)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, RecordingPolicy(interrupt_after=SUCCESS_STEP + 1))  # dies inside episode 1
    assert list(_by_key(tmp_path)) == [(SUCCEEDS, 0)]
    with open(tmp_path / "episodes.jsonl", "a") as f:
        f.write('{"task_id": 0, "epis')  # a torn line, as a kill mid-write leaves
    summary = evaluate(
        _cfg(tmp_path, tasks=[SUCCEEDS], num_trials_per_task=3, num_envs=1, resume=True), RecordingPolicy()
    )
    assert summary["overall"]["successes"] == 3 and summary["complete"]


def test_report_only_tables_a_cut_off_run_from_its_files_alone(tmp_path, fake_libero, capsys):
    """An evaluation cut off mid-run (a lease's time limit) is reported from its folder: the finished episodes per
    task, tasks not reached at 0/0, `complete` false; nothing is loaded, run or written. eval.py --report_only."""
    cfg = _cfg(tmp_path / "run", tasks=[SUCCEEDS, NEVER], num_trials_per_task=2, num_envs=1)
    with pytest.raises(KeyboardInterrupt):  # dies in the second task's first episode
        evaluate(cfg, RecordingPolicy(interrupt_after=2 * SUCCESS_STEP + 1))
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    n_pools = len(fake_libero)
    summary = load_script("eval").main(parse(["--out_dir", str(tmp_path / "run"), "--report_only", "true"]))
    assert [(t["task_id"], t["successes"], t["trials"]) for t in summary["tasks"]] == [(SUCCEEDS, 2, 2), (NEVER, 0, 0)]
    assert summary["overall"]["successes"] == 2 and not summary["complete"]
    assert "do thing 0" in capsys.readouterr().out  # the table
    assert len(fake_libero) == n_pools and {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == files
    with pytest.raises(FileNotFoundError, match="eval_config.json"):
        report(tmp_path / "nothing")
    with pytest.raises(ValueError, match="report_only needs --out_dir"):
        load_script("eval").main(parse(["--report_only", "true"]))


def test_evaluations_split_by_task_merge_into_the_single_run(tmp_path, fake_libero, monkeypatch, capsys):
    """A protocol split between runs (tasks [2, 0] and [1, 3], as on two nodes) merges into one folder whose table is
    the single run's, whose config selects the whole suite, and that --resume finds complete (nothing runs again)."""
    import vla.eval_merge as eval_merge

    monkeypatch.setattr(eval_merge, "list_tasks", lambda suite: TASKS)
    whole = evaluate(_cfg(tmp_path / "whole", num_envs=1), RecordingPolicy())
    for name, tasks in (("a", [ENV_ERROR, SUCCEEDS]), ("b", [NEVER, RESET_ERROR])):
        evaluate(_cfg(tmp_path / name, tasks=tasks, num_envs=1), RecordingPolicy())
    parts = [str(tmp_path / "a"), str(tmp_path / "b")]
    merged = load_script("merge_evals").main(["--inputs", *parts, "--out", str(tmp_path / "merged")])
    assert "merged 2 evaluations" in capsys.readouterr().out
    assert merged["tasks"] == whole["tasks"] and merged["overall"] == whole["overall"] and merged["complete"]
    config = json.loads((tmp_path / "merged" / "eval_config.json").read_text())
    assert config["tasks"] is None and config["merged_from"] == parts
    on_disk = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("merged", "whole")]
    assert on_disk[0]["tasks"] == on_disk[1]["tasks"] and on_disk[0]["overall"] == on_disk[1]["overall"]
    n_pools = len(fake_libero)
    resumed = evaluate(_cfg(tmp_path / "merged", num_envs=1, resume=True), RecordingPolicy())
    assert resumed["overall"] == whole["overall"] and len(fake_libero) == n_pools  # no episode left to run

    # two tasks of four: the merged config names them
    evaluate(_cfg(tmp_path / "c", tasks=[SUCCEEDS], num_envs=1, save_videos=True), RecordingPolicy())
    evaluate(_cfg(tmp_path / "d", tasks=[NEVER], num_envs=1), RecordingPolicy())
    two = eval_merge.merge_evaluations([tmp_path / "c", tmp_path / "d"], tmp_path / "two")
    assert [t["task_id"] for t in two["tasks"]] == [SUCCEEDS, NEVER] and two["episodes_expected"] == 4
    videos = [r["video"] for r in read_episodes(tmp_path / "two" / "episodes.jsonl") if r["video"]]
    assert len(videos) == 2 and all((tmp_path / "two" / v).resolve().is_file() for v in videos)  # the inputs' files
    assert json.loads((tmp_path / "two" / "eval_config.json").read_text())["tasks"] == [SUCCEEDS, NEVER]


def test_merging_refuses_incomparable_or_overlapping_evaluations_before_writing(tmp_path, fake_libero, monkeypatch):
    import vla.eval_merge as eval_merge

    monkeypatch.setattr(eval_merge, "list_tasks", lambda suite: TASKS)
    evaluate(_cfg(tmp_path / "a", tasks=[SUCCEEDS], num_envs=1), RecordingPolicy())
    evaluate(_cfg(tmp_path / "b", tasks=[SUCCEEDS, NEVER], num_envs=1), RecordingPolicy())
    evaluate(_cfg(tmp_path / "c", tasks=[NEVER], num_envs=1, max_steps=4), RecordingPolicy())
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"task 0 episode \d is in both"):
        eval_merge.merge_evaluations([tmp_path / "a", tmp_path / "b"], out)
    with pytest.raises(ValueError, match="max_steps"):
        eval_merge.merge_evaluations([tmp_path / "a", tmp_path / "c"], out)
    with pytest.raises(FileNotFoundError, match="eval_config.json"):
        eval_merge.merge_evaluations([tmp_path / "a", tmp_path / "nothing"], out)
    with pytest.raises(ValueError, match="at least two"):
        eval_merge.merge_evaluations([tmp_path / "a"], out)
    with pytest.raises(ValueError, match="one of the inputs"):
        eval_merge.merge_evaluations([tmp_path / "a", tmp_path / "c"], tmp_path / "a")
    assert not out.exists()  # nothing written by a refused merge
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    evaluate(_cfg(tmp_path / "d", tasks=[NEVER], num_envs=1), RecordingPolicy())
    with pytest.raises(FileExistsError, match="--overwrite"):
        eval_merge.merge_evaluations([tmp_path / "a", tmp_path / "d"], out)
    assert eval_merge.merge_evaluations([tmp_path / "a", tmp_path / "d"], out, overwrite=True)["complete"]
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces the evaluation's files, nothing else


def test_retry_errors_reruns_only_errored_episodes(tmp_path, fake_libero):
    evaluate(_cfg(tmp_path, tasks=[SUCCEEDS], num_envs=1), RecordingPolicy(raise_for={"do thing 0"}))
    assert _by_key(tmp_path)[SUCCEEDS, 0]["status"] == "error"
    summary = evaluate(_cfg(tmp_path, tasks=[SUCCEEDS], num_envs=1, resume=True, retry_errors=True), RecordingPolicy())
    assert summary["overall"]["successes"] == 2 and summary["overall"]["errors"] == 0  # the latest record counts
    assert len(read_episodes(tmp_path / "episodes.jsonl")) == 4


def test_videos_hold_one_frame_per_policy_step(tmp_path, fake_libero):
    import imageio.v2 as imageio

    evaluate(_cfg(tmp_path, tasks=[SUCCEEDS], num_trials_per_task=1, save_videos=True), RecordingPolicy())
    record = _by_key(tmp_path)[SUCCEEDS, 0]
    frames = imageio.mimread(tmp_path / record["video"])
    assert len(frames) == SUCCESS_STEP and fake_libero[0].cameras == ("agentview",)


def test_wandb_offline_logs_into_the_run_dir(tmp_path, fake_libero):
    pytest.importorskip("wandb")
    summary = evaluate(_cfg(tmp_path, tasks=[SUCCEEDS], wandb=True, wandb_mode="offline"), RecordingPolicy())
    assert summary["overall"]["successes"] == 2
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task_suite": "libero_100"}, ValueError, "libero_spatial"),
        ({"policy": "gpt"}, ValueError, "expert"),
        ({"policy": "vla"}, ValueError, "checkpoint"),
        ({"policy": "vla", "checkpoint": "/no/such/ckpt"}, FileNotFoundError, "/no/such/ckpt"),
        ({"num_envs": 0}, ValueError, "num_envs"),
        ({"quantization": "3bit"}, ValueError, "8bit"),
        ({"out_dir": None, "resume": True}, ValueError, "out_dir"),
        ({"tasks": [0, 7]}, ValueError, r"\[7\]"),
    ],
)
def test_config_is_validated_before_anything_runs(tmp_path, fake_libero, kwargs, error, match):
    with pytest.raises(error, match=match):
        evaluate(_cfg(tmp_path, **kwargs), RecordingPolicy())
    assert fake_libero == [] and not (tmp_path / "episodes.jsonl").exists()


class FakeVLA:
    def __init__(self):
        self.calls = []

    def predict_actions(self, images, instructions, unnorm_key=None):
        self.calls.append((images, instructions, unnorm_key))
        return np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.0], [0.0] * 6 + [0.99]])[: len(images)]

    def warm_up_decoding(self, instructions, max_batch, unnorm_key):
        return 0  # graphs captured: none without fast decoding


def test_vla_policy_batches_preprocesses_and_postprocesses():
    pytest.importorskip("tensorflow")
    from vla.libero_io import libero_image

    raw = {s: np.random.default_rng(s).integers(0, 256, (256, 256, 3), dtype=np.uint8) for s in (3, 1)}
    vla = FakeVLA()
    policy = VLAPolicy(vla, "libero_spatial_no_noops", center_crop=True)
    actions = policy.act({s: {"agentview_image": img} for s, img in raw.items()}, {3: "three", 1: "one"})
    assert len(vla.calls) == 1
    images, instructions, key = vla.calls[0]
    assert instructions == ["one", "three"] and key == "libero_spatial_no_noops"  # slot order
    np.testing.assert_array_equal(images[0], libero_image(raw[1], center_crop=True))
    np.testing.assert_array_equal(policy.last_frames[3], libero_image(raw[3], center_crop=False))
    np.testing.assert_array_equal(actions[1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0])  # model 0 -> close (+1)
    assert actions[3][-1] == -1.0


@pytest.mark.parametrize("prepare_in_workers", [True, False])
@pytest.mark.parametrize("save_videos", [True, False])
def test_a_vla_evaluation_prepares_its_images_where_asked_with_the_same_pixels(tmp_path, fake_libero, monkeypatch,
                                                                               prepare_in_workers, save_videos):  # fmt: skip
    """In the workers (the pool's transform: the 224² images come back instead of the raw render; the uncropped video
    frame too only when videos are saved) or on the host: the model gets the same numpy-back-end pixels, and the
    videos the same uncropped frames."""
    from vla import image_ops
    from vla.libero_io import WorkerImages, libero_image

    monkeypatch.setattr(image_ops, "default_backend", lambda: "numpy")  # as on a GPU node without TensorFlow
    vla = FakeVLA()
    policy = VLAPolicy(vla, "libero_spatial_no_noops", center_crop=True, prepare_in_workers=prepare_in_workers)
    evaluate(_cfg(tmp_path, tasks=[NEVER], num_trials_per_task=1, num_envs=1, save_videos=save_videos), policy)
    (pool,) = fake_libero
    expected = WorkerImages(center_crop=True, video_frames=save_videos) if prepare_in_workers else None
    assert pool.obs_transform == expected
    assert len(vla.calls) == 5  # max_steps, one env
    for t, (images, _, _) in enumerate(vla.calls):  # the fake env's frame at step t is grey level t
        np.testing.assert_array_equal(images[0], libero_image(np.full((32, 32, 3), t, np.uint8), center_crop=True))
    videos = list((tmp_path / "videos").glob("*.mp4")) if save_videos else []
    assert len(videos) == save_videos and all(v.stat().st_size > 0 for v in videos)


def test_random_policy_is_seeded_and_in_range():
    obs = {0: {}, 1: {}}
    first, second = RandomPolicy(3).act(obs, {}), RandomPolicy(3).act(obs, {})
    np.testing.assert_array_equal(first[1], second[1])
    for action in first.values():
        assert action.shape == (7,) and np.abs(action[:6]).max() <= 1 and action[6] in (-1.0, 1.0)


def test_expert_policy_builds_one_expert_per_slot_from_the_bddl_goal(tmp_path):
    bddl = tmp_path / "task.bddl"
    bddl.write_text("(define (problem p) (:goal (And (On akita_black_bowl_1 plate_1))))")
    policy = ExpertPolicy()
    task = TaskInfo(0, "t", "put the bowl on the plate", str(bddl))
    policy.reset(0, task)
    policy.reset(1, task)
    obs = {
        "robot0_eef_pos": np.array([0.0, 0.0, 1.2]),
        "robot0_eef_quat": np.array([1.0, 0.0, 0.0, 0.0]),
        "akita_black_bowl_1_pos": np.array([0.1, 0.0, 0.9]),
        "akita_black_bowl_1_quat": np.array([0.0, 0.0, 0.0, 1.0]),
        "plate_1_pos": np.array([-0.1, 0.1, 0.9]),
    }
    actions = policy.act({0: obs, 1: obs}, {})
    assert policy.experts[0] is not policy.experts[1]
    # heads toward the bowl at its height: the approach goes over first, then down (`ExpertConfig.level_approach`)
    assert actions[0].shape == (7,) and actions[0][0] > 0 and actions[0][2] == 0


RECORD_KEYS = {
    "task_suite",
    "task_id",
    "task",
    "episode",
    "success",
    "steps",
    "status",
    "error",
    "video",
    "wall_time_s",
}
RATE_KEYS = {"successes", "failures", "errors", "trials", "success_rate", "ci95"}


class WrongActionPolicy(RandomPolicy):
    """Random, but sends a 6-dim action on `broken`'s episodes: robosuite raises inside the env worker."""

    def __init__(self, broken: str):
        super().__init__(seed=0)
        self.broken = broken

    def act(self, observations, instructions):
        actions = super().act(observations, instructions)
        return {s: a[:6] if instructions[s] == self.broken else a for s, a in actions.items()}


@pytest.mark.libero
def test_real_simulator_short_episodes_schema_env_error_and_resume(tmp_path, libero_assets_dir):
    from vla.libero_env import list_tasks, setup_libero

    setup_libero(libero_assets_dir)
    broken = list_tasks("libero_spatial")[1].language
    cfg = EvalConfig(
        policy="random", tasks=[0, 1], num_trials_per_task=1, max_steps=4, num_envs=1, out_dir=str(tmp_path),
        libero_assets=libero_assets_dir,
    )  # fmt: skip
    summary = evaluate(cfg, WrongActionPolicy(broken))
    records = read_episodes(tmp_path / "episodes.jsonl")
    assert [set(r) for r in records] == [RECORD_KEYS, RECORD_KEYS]
    ok, bad = sorted(records, key=lambda r: r["task_id"])
    assert (ok["status"], ok["steps"], ok["success"], ok["error"], ok["episode"]) == ("failure", 4, False, None, 0)
    assert bad["status"] == "error" and "Traceback" in bad["error"] and bad["steps"] == 1
    assert set(summary["overall"]) == RATE_KEYS and all(set(t) >= RATE_KEYS for t in summary["tasks"])
    overall = summary["overall"]
    assert (overall["trials"], overall["errors"], overall["success_rate"]) == (1, 1, 0.0)
    assert json.loads((tmp_path / "summary.json").read_text())["tasks"][1]["errors"] == 1
    resumed = evaluate(EvalConfig(**{**cfg.__dict__, "resume": True}), WrongActionPolicy(broken))
    assert len(read_episodes(tmp_path / "episodes.jsonl")) == 2 and resumed["overall"] == summary["overall"]


def test_an_evaluation_of_a_runs_merged_checkpoint_lands_on_its_learning_curve(tmp_path):
    from vla.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for step in (1, 2, 3, 4):
        run.append_metrics({"step": step, "loss": 1 / step, "action_accuracy": step / 4, "loss_smoothed": 1 / step,
                            "action_accuracy_smoothed": step / 4})  # fmt: skip
    (run.path / "merged").mkdir()
    run.write_json("merged/checkpoint.json", {"step": 4})  # the step of the weights in merged/ (eval reads this)

    def summary(eval_dir: str, successes: int) -> dict:
        overall = {"success_rate": successes / 10, "ci95": list(wilson_interval(successes, 10)), "trials": 10}
        return {"task_suite": "libero_spatial", "overall": overall, "run_dir": eval_dir}

    assert evaluation.record_in_training_run(None, summary("e", 1)) is None
    assert evaluation.record_in_training_run(tmp_path / "elsewhere" / "merged", summary("e", 1)) is None
    assert evaluation.record_in_training_run(run.path / "adapter", summary("e", 1)) is None
    assert evaluation.record_in_training_run(run.path / "merged", summary("eval_a", 3)) == run.path
    evaluation.record_in_training_run(run.path / "merged", summary("eval_a", 4))  # eval_a resumed: replaces its line
    evaluation.record_in_training_run(str(run.path / "merged"), summary("eval_b", 6))
    evals = run.read_evals()
    assert [(e["step"], e["success_rate"], e["eval_dir"]) for e in evals] == [(4, 0.4, "eval_a"), (4, 0.6, "eval_b")]
    from PIL import Image

    assert Image.open(run.file("learning_curve.png")).size == (1350, 350)  # three panels: loss, accuracy, success


@pytest.mark.libero
def test_expert_outcomes_are_the_same_with_one_or_two_workers(tmp_path, libero_assets_dir):
    """The asynchronous scheduler changes when each episode runs and on which worker, never its outcome."""
    outcomes = {}
    for workers in (1, 2):
        cfg = EvalConfig(
            policy="expert", tasks=[0], num_trials_per_task=2, num_envs=workers, out_dir=str(tmp_path / str(workers)),
            libero_assets=libero_assets_dir,
        )  # fmt: skip
        summary = evaluate(cfg, ExpertPolicy())
        assert summary["timing"]["num_workers"] == workers and summary["overall"]["errors"] == 0
        records = read_episodes(tmp_path / str(workers) / "episodes.jsonl")
        outcomes[workers] = sorted((r["episode"], r["status"], r["steps"]) for r in records)
    assert outcomes[1] == outcomes[2] and len(outcomes[1]) == 2
    assert any(status == "success" for _, status, _ in outcomes[1])  # the expert solves this task


def test_best_step_ranks_a_runs_sample_evaluations_or_its_held_out_loss(tmp_path):
    """Early stopping for learning_proof.sh's FULL_ON: the sample evaluations rank the checkpoints (ties to the later
    step), a full-protocol evaluation of the pick never ranks itself, and held-out loss is the other criterion."""
    from vla.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    assert run.best_step("success") is None and run.best_step("val_loss") is None
    for step, val_loss in ((2, 1.3), (4, 1.2), (6, 1.4), (8, None)):
        logged = {"loss": 1.0, "action_accuracy": 0.5, "loss_smoothed": 1.0, "action_accuracy_smoothed": 0.5}
        run.append_metrics({"step": step, **logged, **({} if val_loss is None else {"val_loss": val_loss})})
    for step, rate in ((2, 0.1), (4, 0.2), (6, 0.3), (8, 0.3)):
        run.append_eval({"step": step, "task_suite": "libero_goal", "success_rate": rate, "ci95": [0, 1], "trials": 50,
                         "eval_dir": f"e{step}"})  # fmt: skip
    run.append_eval({"step": 2, "task_suite": "libero_goal", "success_rate": 0.9, "ci95": [0, 1], "trials": 500,
                     "eval_dir": "full"})  # fmt: skip
    assert run.best_step("success") == 8  # 0.3 at steps 6 and 8: the later; the full protocol's 0.9 is not a sample
    assert run.best_step("val_loss") == 4
    with pytest.raises(ValueError, match="'success' or 'val_loss'"):
        run.best_step("accuracy")


@pytest.mark.parametrize("stages", [["ship"], ["train", "ship", "eval"]])
def test_learning_proof_refuses_ship_before_the_evaluations_that_choose_its_checkpoint(tmp_path, stages):
    """With FULL_ON=best_* the evaluations pick the shipped checkpoint, so `ship` before `eval` is refused before any
    stage runs; with FULL_ON=last (`train ship eval`, weights home before the full protocol) ship goes ahead."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "learning_proof.sh"
    env = {**os.environ, "PROOF": str(tmp_path / "proof"), "PYTHON": sys.executable}
    refused = subprocess.run(["bash", script, *stages], env={**env, "FULL_ON": "best_sample"}, capture_output=True,
                             text=True)  # fmt: skip
    assert refused.returncode == 2 and "ship before eval with FULL_ON=best_sample" in refused.stderr
    assert not (tmp_path / "proof").exists()  # nothing ran
    shipped = subprocess.run(["bash", script, "ship"], env={**env, "FULL_ON": "last"}, capture_output=True, text=True)
    assert shipped.returncode == 1 and "ship: no checkpoint of small256" in shipped.stderr


def test_learning_proof_passes_train_flags_to_finetune(tmp_path):
    """TRAIN_FLAGS reach finetune.py after the script's own flags (so they can switch on `speed.compile_vision` or
    override a default without editing the script); without it the command is unchanged."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "learning_proof.sh"
    proof = tmp_path / "proof"
    proof.mkdir()
    env = {**os.environ, "PROOF": str(proof), "PYTHON": "echo"}  # the command line lands in train_small.log
    run = ["bash", "-c", f"source {script} && train_one small"]
    subprocess.run(run, env=env, check=True)
    plain = (proof / "train_small.log").read_text().split()
    flags = "--speed.compile_vision true --optim.batch_size 64"
    subprocess.run(run, env={**env, "TRAIN_FLAGS": flags}, check=True)
    flagged = (proof / "train_small.log").read_text().split()
    assert "--speed.compile_vision" not in plain and plain[0] == "scripts/finetune.py"
    start = flagged.index("--speed.compile_vision")
    assert flagged[start : start + 4] == flags.split() and flagged.index("--optim.batch_size") < start
    assert [w for i, w in enumerate(flagged) if not start <= i < start + 4] == plain


def test_learning_proof_continues_from_init_and_ships_the_copy_it_reads(tmp_path):
    """INIT (training across leases): finetune.py starts from that checkpoint and keeps its action statistics (the
    suite's key); an int8 copy is converted to bf16 first; a folder without config.json is refused before any stage;
    `ship` writes the int8 copy and the bf16 one that INIT reads."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "learning_proof.sh"
    proof, init = tmp_path / "proof", tmp_path / "small-bf16"
    (proof / "runs" / "small" / "merged--8000_chkpt").mkdir(parents=True)
    init.mkdir()
    env = {**os.environ, "PROOF": str(proof), "PYTHON": "echo", "PRESETS": "small", "STEPS": "8000"}
    missing = subprocess.run(["bash", script, "train"], env={**env, "INIT": str(tmp_path / "nothing")},
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and "has no config.json" in missing.stderr
    (init / "config.json").write_text("{}")
    run = ["bash", "-c", f'source {script} && train_one small "$(float_init)"']
    subprocess.run(run, env={**env, "INIT": str(init)}, check=True)
    words = (proof / "train_small.log").read_text().split()
    assert words[words.index("--model.vla_path") + 1] == str(init)
    assert words[words.index("--model.unnorm_key") + 1] == "libero_spatial_no_noops"
    subprocess.run(run, env=env, check=True)
    assert "--model.vla_path" not in (proof / "train_small.log").read_text()  # random weights without INIT
    (init / "config.json").write_text('{"vla_int8": {"format": "rowwise-v1"}}')  # an int8 copy: converted first
    converted = subprocess.run(run, env={**env, "INIT": str(init)}, check=True, capture_output=True, text=True)
    words = (proof / "train_small.log").read_text().split()
    assert words[words.index("--model.vla_path") + 1] == f"{proof}/init-bf16"
    call = converted.stderr.split()
    assert call[:3] == ["scripts/convert_checkpoint.py", "--checkpoint", str(init)]
    assert call[call.index("--dtype") + 1] == "bfloat16" and call[call.index("--out") + 1] == f"{proof}/init-bf16"
    shipped = subprocess.run(["bash", script, "ship"], env=env, check=True, capture_output=True, text=True).stdout
    calls = [line.split() for line in shipped.splitlines() if line.startswith("scripts/convert_checkpoint.py")]
    assert [(c[c.index("--out") + 1], c[c.index("--dtype") + 1]) for c in calls] == [
        (f"{proof}/ship/small-int8", "int8"),
        (f"{proof}/ship/small-bf16", "bfloat16"),
    ]


def test_learning_proof_grows_init_before_training_from_it(tmp_path):
    """GROW: INIT (after the int8 -> bf16 conversion) is grown once by scripts/grow_checkpoint.py with GROW's flags,
    and finetune.py starts from the grown copy; GROW without INIT is refused before any stage."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "learning_proof.sh"
    proof, init = tmp_path / "proof", tmp_path / "small-int8"
    proof.mkdir()
    init.mkdir()
    (init / "config.json").write_text('{"vla_int8": {"format": "rowwise-v1"}}')
    env = {**os.environ, "PROOF": str(proof), "PYTHON": "echo", "PRESETS": "small", "GROW": "--add_llm_layers 4"}
    refused = subprocess.run(["bash", script, "train"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "grows INIT: set INIT" in refused.stderr
    run = ["bash", "-c", f'source {script} && train_one small "$(float_init)"']
    done = subprocess.run(run, env={**env, "INIT": str(init)}, check=True, capture_output=True, text=True)
    convert, grow = (line.split() for line in done.stderr.splitlines())  # the two commands, in order
    assert convert[0] == "scripts/convert_checkpoint.py" and convert[convert.index("--out") + 1] == f"{proof}/init-bf16"
    assert grow[:3] == ["scripts/grow_checkpoint.py", "--checkpoint", f"{proof}/init-bf16"]
    assert grow[grow.index("--out") + 1] == f"{proof}/init-grown" and grow[-2:] == ["--add_llm_layers", "4"]
    words = (proof / "train_small.log").read_text().split()
    assert words[words.index("--model.vla_path") + 1] == f"{proof}/init-grown"


def test_learning_proof_passes_collect_flags_to_collect_demos(tmp_path):
    """COLLECT_FLAGS reach collect_demos.py after the script's own flags (e.g. rehearsed misses for one task)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "learning_proof.sh"
    env = {**os.environ, "PROOF": str(tmp_path / "proof"), "PYTHON": "echo", "TASKS": "[4]"}
    run = ["bash", "-c", f"source {script} && collect"]
    plain = subprocess.run(run, env=env, check=True, capture_output=True, text=True).stdout.split()
    flags = "--miss_height 0.12 --max_steps 320"
    flagged = subprocess.run(run, env={**env, "COLLECT_FLAGS": flags}, check=True, capture_output=True, text=True)
    assert plain[0] == "scripts/collect_demos.py" and plain[-2:] == ["--tasks", "4"]
    assert flagged.stdout.split() == plain + flags.split()


@pytest.mark.libero
def test_learning_proof_runs_first_tasks_first_and_merges_the_full_protocol(tmp_path):
    """FIRST_TASKS="4,3": the full protocol evaluates tasks 4 and 3 first (their own folder), then the suite's other
    eight, and merges both into the one full-protocol folder that `ship`, the docs and --report_only read."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "learning_proof.sh"
    out = tmp_path / "full"
    for part, tasks in (("first", [4, 3]), ("rest", [0, 1, 2, 5, 6, 7, 8, 9])):  # what eval.py would have written
        folder = tmp_path / f"full-{part}"
        folder.mkdir()
        cfg = EvalConfig(task_suite="libero_spatial", policy="random", num_trials_per_task=1, tasks=tasks)
        (folder / "eval_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
        (folder / "episodes.jsonl").write_text("".join(json.dumps(
            {"task_id": t, "episode": 0, "status": "success" if t % 2 else "failure", "steps": 9, "wall_time_s": 1.0}
        ) + "\n" for t in tasks))  # fmt: skip
    # the evaluations above stand in for eval.py
    stub = 'eval_checkpoint() { echo "$1 $2 $3 $TASKS $ENVS" >> "$CALLS"; }'
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "FIRST_TASKS": "4,3",
        "FULL_TRIALS": "1",
        "EVAL_ENVS": "7",  # the full protocol's env count (sample evaluations keep WORKERS)
        "CALLS": str(tmp_path / "c"),
    }
    run = ["bash", "-c", f"source {script} && {stub} && full_protocol CK {out}"]
    printed = subprocess.run(run, env=env, check=True, capture_output=True, text=True).stdout
    assert (tmp_path / "c").read_text().splitlines() == [
        f"CK 1 {out}-first [4,3] 7",
        f"CK 1 {out}-rest [0,1,2,5,6,7,8,9] 7",
    ]
    assert "overall     5/10" in printed  # the merged table: tasks 1, 3, 5, 7, 9 succeeded
    assert report(out)["complete"] and json.loads((out / "eval_config.json").read_text())["tasks"] is None
    both = subprocess.run(run, env={**env, "TASKS": "[0]"}, capture_output=True, text=True)
    assert both.returncode == 2 and "set TASKS or FIRST_TASKS, not both" in both.stderr

"""The env scheduler's batching on `vla.fake_pool` (threads that sleep, no simulator): greedy vs gathered batches,
outcomes independent of batching and worker count, resets never waited for, and the eval wiring of `gather_s`."""

from types import SimpleNamespace

import numpy as np
import pytest

import vla.evaluation as evaluation
from vla.env_pool import ResetRequest
from vla.env_scheduler import Job, Scheduler, Timing
from vla.evaluation import EvalConfig
from vla.fake_pool import FakePool, LatencyPolicy
from vla.libero_env import TaskInfo
from vla.policies import ExpertPolicy, VLAPolicy

TASK = TaskInfo(0, "fake", "do the fake task", "/nonexistent/fake.bddl")


def _jobs(seeds):
    return [Job(TASK, ResetRequest(0, seed=s), key=s) for s in seeds]


def _run(pool, policy, jobs, max_steps, gather_s):
    """Run the jobs; returns the scheduler and [(time the outcome came, outcome)]."""
    import time

    scheduler = Scheduler(pool, policy, max_steps, gather_s=gather_s)
    outcomes = [(time.perf_counter(), o) for o in scheduler.run(jobs)]
    return scheduler, outcomes


def _slow_policy_run(gather_s):
    """4 envs whose resets end at different times, then a policy slower than a step (40 ms vs 30 ms)."""
    pool = FakePool(4, step_s=0.03, reset_s=0.1, jitter=0.5, episode_length=lambda r: 15)
    policy = LatencyPolicy(0.04)
    with pool:
        scheduler, outcomes = _run(pool, policy, _jobs(range(4)), 50, gather_s)
    assert [o.status for _, o in outcomes] == ["success"] * 4
    return pool, policy, scheduler, outcomes


def test_gathering_makes_larger_batches_of_every_stepping_env_than_greedy():
    _, _, greedy, _ = _slow_policy_run(0.0)
    pool, policy, gather, outcomes = _slow_policy_run(1.0)
    mean = lambda s: s.timing.steps / s.timing.policy_calls  # noqa: E731
    assert mean(gather) > mean(greedy) + 0.5, (mean(gather), mean(greedy))
    assert gather.timing.steps == greedy.timing.steps == 4 * 15
    # once every reset has answered and until the first episode ends, each call holds all four envs
    resets_done = max(t for t, kind, _, what in pool.events if kind == "recv" and what == "reset")
    first_end = outcomes[0][0]
    steady = [slots for t, slots in policy.calls if resets_done < t < first_end]
    assert len(steady) >= 5 and all(slots == [0, 1, 2, 3] for slots in steady), steady


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("gather_s", [0.0, 0.2])
def test_outcomes_do_not_depend_on_batching_or_workers(workers, gather_s):
    lengths = {seed: 3 + seed % 11 for seed in range(10)}  # 3..13 steps; the limit of 10 fails some
    pool = FakePool(workers, step_s=0.002, reset_s=0.005, episode_length=lambda r: lengths[r.seed], seed=workers)
    with pool:
        _, outcomes = _run(pool, LatencyPolicy(0.001, 0.0005), _jobs(lengths), 10, gather_s)
    got = {o.episode.job.key: (o.status, o.episode.steps) for _, o in outcomes}
    expected = {k: ("success", n) if n <= 10 else ("failure", 10) for k, n in lengths.items()}
    assert got == expected  # an action sent to the wrong env would come back as an error


def test_gathering_never_waits_for_a_resetting_env():
    """Worker 0's short episode ends and it resets for 0.4 s; worker 1 keeps stepping meanwhile, acted on at once
    each time (gather_s 0.05 would allow at most 8 calls in that time if the reset were waited for)."""
    lengths = {0: 3, 1: 150, 2: 3}
    pool = FakePool(2, step_s=0.005, reset_s=0.4, jitter=0.0, episode_length=lambda r: lengths[r.seed])
    policy = LatencyPolicy(0.002)
    with pool:
        _, outcomes = _run(pool, policy, _jobs([0, 1, 2]), 300, gather_s=0.05)
    assert {o.episode.job.key: o.status for _, o in outcomes} == {0: "success", 1: "success", 2: "success"}
    resets = [t for t, _, worker, what in pool.events if worker == 0 and what == "reset"]
    assert len(resets) == 4  # send, recv of the first job; send, recv of the third
    during = [slots for t, slots in policy.calls if resets[2] < t < resets[3]]
    assert len(during) >= 20 and all(slots == [1] for slots in during), len(during)


def test_a_negative_gather_s_is_refused():
    with pytest.raises(ValueError, match="--gather_s 0"):
        EvalConfig(policy="random", gather_s=-0.1).validate()
    with pytest.raises(ValueError, match="gather_s"):
        Scheduler(SimpleNamespace(num_workers=1), LatencyPolicy(), 10, gather_s=-1.0)


def test_policies_leave_batching_greedy():
    """Simulated (scripts/bench_scheduler.py): greedy beats gathering for the expert and the 7B's cost profile alike."""
    cuda = SimpleNamespace(device=SimpleNamespace(type="cuda"))
    assert getattr(VLAPolicy(cuda, "k", True, fast_decoding=False), "gather_s", 0.0) == 0.0
    assert getattr(ExpertPolicy(), "gather_s", 0.0) == 0.0


@pytest.mark.parametrize(
    ("flag", "hint", "used"), [(None, 0.3, 0.3), (None, None, 0.0), (0.0, 0.3, 0.0), (0.2, None, 0.2)]
)
def test_evaluate_passes_the_flag_or_else_the_policy_hint(tmp_path, monkeypatch, flag, hint, used):
    seen = []

    class RecordingScheduler(Scheduler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.gather_s)

    monkeypatch.setattr(evaluation, "Scheduler", RecordingScheduler)
    monkeypatch.setattr(evaluation, "setup_libero", lambda assets_dir=None: None)
    monkeypatch.setattr(evaluation, "list_tasks", lambda suite: [TASK])
    monkeypatch.setattr(evaluation, "load_init_states", lambda suite, t: np.zeros((50, 2)))
    monkeypatch.setattr(evaluation, "open_pool", lambda *a: FakePool(a[1], 0.001, 0.001, episode_length=lambda r: 2))
    cfg = EvalConfig(
        policy="random", num_trials_per_task=2, num_envs=2, max_steps=5, gather_s=flag, out_dir=str(tmp_path)
    )
    summary = evaluation.evaluate(cfg, LatencyPolicy(gather_s=hint))
    assert seen == [used] and summary["overall"]["successes"] == 2


class _TimedPolicy(LatencyPolicy):
    """A policy that times a part of its own calls, as VLAPolicy does (`timing`: cumulative seconds by part)."""

    def __init__(self, base_s):
        super().__init__(base_s)
        self.timing = {"model_s": 0.0}

    def act(self, observations, instructions):
        self.timing["model_s"] += self.base_s
        return super().act(observations, instructions)


def test_timing_shows_the_parts_a_policy_times_itself_per_run():
    policy = _TimedPolicy(0.01)
    for _ in range(2):  # one policy for two runs: each run's timing counts only its own calls
        with FakePool(2, step_s=0.002, reset_s=0.005, episode_length=lambda r: 5) as pool:
            scheduler, outcomes = _run(pool, policy, _jobs(range(3)), 10, 0.0)
        timing = scheduler.timing
        assert [o.status for _, o in outcomes] == ["success"] * 3
        assert timing.policy_parts["model_s"] == pytest.approx(0.01 * timing.policy_calls)
        assert timing.policy_parts["model_s"] <= timing.policy_s
        assert f"model {timing.policy_parts['model_s']:.1f} s" in timing.line()
        assert timing.as_dict()["policy_parts"] == {"model_s": round(timing.policy_parts["model_s"], 3)}
    assert policy.timing["model_s"] > timing.policy_parts["model_s"]
    untimed = Timing(num_workers=1)  # a policy without timers: no parts in the line
    assert untimed.policy_parts == {} and "mean batch None)" in untimed.line()


def test_a_padding_latency_policy_costs_the_rows_it_pads_to(monkeypatch):
    """bench_scheduler's `--pad captured`: one observation costs what the fast decoder's captured batch would (12 rows
    here), not one row."""
    import vla.fake_pool as fake_pool

    slept = []
    monkeypatch.setattr(fake_pool.time, "sleep", slept.append)
    for pad in (None, lambda n: 12):
        LatencyPolicy(0.5, per_item_s=0.01, pad=pad).act({0: {"t": np.array(0)}}, {0: TASK.language})
    assert slept == pytest.approx([0.51, 0.62])

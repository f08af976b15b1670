"""Demo collection on a fake env pool (no simulator): random placements only (never the fixed eval states), DART-style
noise on the executed action with the clean action recorded, successes only, and the TF-free frame-store path."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scripts_loader import load_script

import vla.demos as demos
import vla.env_pool as env_pool
import vla.libero_env as libero_env
from vla.env_pool import ResetRequest, StepResult
from vla.libero_env import TaskInfo

SUCCEEDS, NEVER = 0, 1
SUCCESS_STEP = 4
TASKS = [TaskInfo(i, f"task_{i}", f"do thing {i}", f"/nonexistent/{i}.bddl") for i in range(2)]
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "collect_demos.py"
CLEAN = np.array([0.5, -0.5, 0.25, 0.1, -0.1, 0.0, 1.0])


class DemoPool:
    """Task SUCCEEDS reports done at step SUCCESS_STEP, NEVER never does; records every request it is sent."""

    instances: list["DemoPool"] = []

    def __init__(self, suite, num_workers, *, assets_dir=None, cameras=(), gl_envs=None, hard_reset=False,
                 obs_transform=None, answer_pipe_bytes=None):  # fmt: skip
        self.num_workers, self.cameras, self.tasks, self.hard_reset = num_workers, cameras, TASKS, hard_reset
        self.obs_transform = obs_transform or (lambda obs: obs)  # applied "in the worker", as EnvPool does
        self.requests: list[tuple[int, object]] = []
        self.state, self.pending = {}, {}
        DemoPool.instances.append(self)

    def task_info(self, task_id):
        return TASKS[task_id]

    def _obs(self, w):
        """Renders of value t (the step count) with a marker (255) in the raw top-left pixel, of the pool's cameras
        only (as robosuite: `<camera>_image`)."""
        t = self.state[w][1]
        renders = {"agentview": np.full((8, 8, 3), t, np.uint8), "robot0_eye_in_hand": np.zeros((8, 8, 3), np.uint8)}
        obs = {f"{camera}_image": renders[camera] for camera in self.cameras}
        for image in obs.values():
            image[0, 0] = 255
        return self.obs_transform({**obs, "robot0_eef_pos": np.full(3, t, float),
                "robot0_eef_quat": np.array([0, 0, 0, 1.0]), "robot0_gripper_qpos": np.zeros(2),
                "robot0_joint_pos": np.zeros(7)})  # fmt: skip

    def send(self, w, request):
        self.requests.append((w, request))
        if isinstance(request, ResetRequest):
            self.state[w] = [request.task_id, 0]
        else:
            self.state[w][1] += 1
        task_id, t = self.state[w]
        self.pending[w] = StepResult(obs=self._obs(w), done=task_id == SUCCEEDS and t == SUCCESS_STEP)

    def receive(self, timeout=None):
        ready, self.pending = self.pending, {}
        return ready

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class ConstantExpert:
    """Stands in for the scripted expert: always the CLEAN action."""

    cameras = ()
    last_frames: dict = {}

    def reset(self, slot, task):
        pass

    def act(self, observations, instructions):
        return {s: CLEAN.copy() for s in observations}


class FakeWriter:
    instances: list["FakeWriter"] = []

    def __init__(self, out_dir, dataset_name):
        self.out_dir, self.dataset_name, self.episodes, self.closed = out_dir, dataset_name, [], False
        FakeWriter.instances.append(self)

    def add_episode(self, episode):
        self.episodes.append(episode)

    def close(self):
        self.closed = True
        return self.out_dir / self.dataset_name


@pytest.fixture
def fake_collection(monkeypatch):
    """Fake pool, writer and tasks; the fixed eval states cannot be loaded, and TensorFlow cannot be imported."""
    DemoPool.instances, FakeWriter.instances = [], []

    def forbidden(*args, **kwargs):
        raise AssertionError("demo collection must never load the benchmark's fixed initial states")

    def no_tf(*args, **kwargs):
        raise AssertionError("the frames path must not import TensorFlow")

    monkeypatch.setattr(env_pool, "EnvPool", DemoPool)
    monkeypatch.setattr(env_pool, "check_gl", lambda env: None)
    monkeypatch.setattr(demos, "FrameStoreWriter", FakeWriter)
    monkeypatch.setattr(libero_env, "load_init_states", forbidden)
    monkeypatch.setattr("vla.evaluation.load_init_states", forbidden)
    monkeypatch.setattr("vla.rlds.import_tf", no_tf)
    monkeypatch.setattr(demos.ScriptedExpert, "from_bddl", lambda path, **kw: None)
    return DemoPool.instances


def _cfg(tmp_path, **kwargs):
    defaults = {"episodes_per_task": 3, "out": str(tmp_path), "num_workers": 2, "max_steps": 6, "format": "frames"}
    return demos.CollectConfig(**{**defaults, **kwargs})


def test_noisy_collection_records_clean_actions_of_successes_from_random_placements(tmp_path, fake_collection):
    summary = demos.collect(_cfg(tmp_path, action_noise=0.2, seed=1), ConstantExpert())
    pool, (writer,) = fake_collection[0], FakeWriter.instances
    resets = [r for _, r in pool.requests if isinstance(r, ResetRequest)]
    assert all(r.init_state is None for r in resets)  # LIBERO's random placement
    assert sorted(r.seed for r in resets) == [100_000 + 1_000 * t + e for t in (0, 1) for e in range(3)]
    assert pool.cameras == ("agentview",)  # the frame store keeps the agentview image alone: the wrist is not rendered
    assert writer.closed and writer.dataset_name == "libero_spatial_no_noops"
    assert len(writer.episodes) == 3 and all(e["language_instruction"] == "do thing 0" for e in writer.episodes)
    for episode in writer.episodes:
        assert episode["action"].shape == (SUCCESS_STEP, 7) and episode["image"].shape == (SUCCESS_STEP, 8, 8, 3)
        assert "wrist_image" not in episode
        np.testing.assert_array_equal(episode["action"], np.tile(CLEAN.astype(np.float32), (SUCCESS_STEP, 1)))
    executed = np.stack([a for _, a in pool.requests if not isinstance(a, ResetRequest)])
    assert np.all(executed[:, 3:] == CLEAN[3:])  # by default rotations and the gripper command are not noised
    noise = executed[:, :3] - CLEAN[:3]
    assert np.all(np.abs(executed[:, :3]) <= 1) and 0.1 < noise.std() < 0.3
    assert summary["format"] == "frames" and summary["timing"]["steps"] == len(executed)
    rows = {r["task_id"]: r for r in summary["tasks"]}
    assert (rows[SUCCEEDS]["successes"], rows[NEVER]["failures"]) == (3, 3)
    assert rows[NEVER]["failed_env_seeds"] == [100_000 + 1_000 * NEVER + e for e in range(3)]  # replayable
    assert rows[SUCCEEDS]["failed_env_seeds"] == []


class EchoExpert(ConstantExpert):
    """The CLEAN action with dim 0 set from the observation it was computed from (the fake env's step count t)."""

    def act(self, observations, instructions):
        return {s: np.array([obs["robot0_eef_pos"][0] / 10, *CLEAN[1:]]) for s, obs in observations.items()}


def test_each_frame_is_paired_with_the_clean_action_computed_from_it(tmp_path, fake_collection):
    # no off-by-one between a recorded observation and its action, and the noisy executed action is not what is kept
    demos.collect(_cfg(tmp_path, action_noise=0.2, num_workers=1), EchoExpert())
    executed = np.stack([a for _, a in fake_collection[-1].requests if not isinstance(a, ResetRequest)])
    for episode in FakeWriter.instances[-1].episodes:
        # rotated 180°, as OpenVLA's data: the raw top-left marker bottom-right
        assert np.all(episode["image"][:, -1, -1] == 255) and not np.any(episode["image"][:, 0, 0] == 255)
        steps = episode["image"][:, 0, 0, 0].astype(np.float32)  # the fake render's value is the step count t
        np.testing.assert_array_equal(steps, np.arange(SUCCESS_STEP))  # the reset's observation first, none after
        np.testing.assert_array_equal(episode["state"][:, 0], steps)
        np.testing.assert_allclose(episode["action"][:, 0], steps / 10, atol=1e-7)
        np.testing.assert_array_equal(
            episode["action"][:, 1:], np.tile(CLEAN[1:].astype(np.float32), (SUCCESS_STEP, 1))
        )
    assert np.abs(executed[:SUCCESS_STEP, 0] - np.arange(SUCCESS_STEP) / 10).min() > 1e-4  # noise was executed


def test_rlds_collection_renders_and_records_both_cameras(tmp_path, fake_collection, monkeypatch):
    # the modified_libero_rlds layout has image and wrist_image: RLDS collection renders both, each rotated 180°
    written = {}

    def write_episodes(episodes, out, name, fmt):
        written[fmt] = list(episodes)
        return out / name

    monkeypatch.setattr(demos, "write_episodes", write_episodes)
    demos.collect(_cfg(tmp_path, format="rlds", num_workers=1), ConstantExpert())
    assert fake_collection[-1].cameras == ("agentview", "robot0_eye_in_hand")
    assert len(written["rlds"]) == 3
    for episode in written["rlds"]:
        for key in ("image", "wrist_image"):
            assert episode[key].shape == (SUCCESS_STEP, 8, 8, 3)
            assert np.all(episode[key][:, -1, -1] == 255) and not np.any(episode[key][:, 0, 0] == 255)
        np.testing.assert_array_equal(episode["image"][:, 0, 0, 0], np.arange(SUCCESS_STEP))


def test_noise_dims_xyzrpy_noises_the_rotations_too(tmp_path, fake_collection):
    demos.collect(_cfg(tmp_path, action_noise=0.2, noise_dims="xyzrpy", num_workers=1), ConstantExpert())
    executed = np.stack([a for _, a in fake_collection[-1].requests if not isinstance(a, ResetRequest)])
    assert np.all(executed[:, 6] == CLEAN[6]) and 0.1 < (executed[:, 3:6] - CLEAN[3:6]).std() < 0.3
    with pytest.raises(ValueError, match="noise_dims"):
        _cfg(tmp_path / "x", noise_dims="rpy").validate()


def test_noise_is_reproducible_and_zero_noise_executes_the_clean_action(tmp_path, fake_collection):
    def executed(out, noise):
        demos.collect(_cfg(out, action_noise=noise, num_workers=1), ConstantExpert())
        return np.stack([a for _, a in fake_collection[-1].requests if not isinstance(a, ResetRequest)])

    np.testing.assert_array_equal(executed(tmp_path / "a", 0.1), executed(tmp_path / "b", 0.1))
    np.testing.assert_array_equal(executed(tmp_path / "c", 0.0), np.tile(CLEAN, (3 * SUCCESS_STEP + 3 * 6, 1)))


def test_workers_reset_softly_unless_hard_resets_are_asked_for(tmp_path, fake_collection):
    demos.collect(_cfg(tmp_path / "soft", num_workers=1), ConstantExpert())
    demos.collect(_cfg(tmp_path / "hard", num_workers=1, hard_reset=True), ConstantExpert())
    assert [pool.hard_reset for pool in fake_collection] == [False, True]


def test_config_checks_noise_format_and_existing_output(tmp_path):
    with pytest.raises(ValueError, match="action_noise"):
        _cfg(tmp_path, action_noise=-0.1).validate()
    with pytest.raises(ValueError, match="frames"):
        _cfg(tmp_path, format="hdf5").validate()
    (tmp_path / "libero_spatial_no_noops").mkdir()
    with pytest.raises(FileExistsError, match="--out"):
        _cfg(tmp_path).validate()


def _script():
    return load_script("collect_demos")


def test_demos_and_its_script_import_no_tensorflow():
    code = (
        "import importlib.util, sys\nimport vla.demos\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(SCRIPT)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_collect_demos_cli_takes_the_new_flags():
    argv = [
        "--action_noise",
        "0.1",
        "--format",
        "frames",
        "--gl",
        "egl",
        "--egl_devices",
        "0,1",
        "--hard_reset",
        "true",
    ]
    cfg = _script().parse_args(argv)
    assert (cfg.action_noise, cfg.format, cfg.gl, cfg.egl_devices, cfg.hard_reset) == (
        0.1,
        "frames",
        "egl",
        [0, 1],
        True,
    )

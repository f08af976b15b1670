"""LIBERO set-up and observation conventions (pure numpy), and the spawned EnvPool on the real simulator."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vla.env_pool import ResetRequest
from vla.libero_env import (
    DUMMY_ACTION,
    NUM_STEPS_WAIT,
    SUITE_MAX_STEPS,
    LiberoSetupError,
    libero_state,
    noop_mask,
    quat_to_axis_angle,
    resolve_assets_dir,
    upright,
)

REPO = Path(__file__).resolve().parents[1]


def _action(xyz=(0, 0, 0), rpy=(0, 0, 0), gripper=-1.0):
    return np.array([*xyz, *rpy, gripper], dtype=np.float64)


def test_noop_mask_follows_openvla_regeneration_rule():
    actions = np.stack(
        [
            _action(gripper=-1),  # first step: only the norm test -> no-op
            _action((0.5, 0, 0), gripper=-1),  # moves -> kept
            _action((5e-5, 0, 0), gripper=-1),  # tiny motion, same gripper as last kept -> no-op
            _action(gripper=1),  # still, but the gripper changes -> kept
            _action(gripper=1),  # still, same gripper -> no-op
            _action(rpy=(0, 0, 2e-4), gripper=1),  # rotation counts in the norm -> kept
            _action(gripper=-1),  # gripper opens -> kept
        ]
    )
    np.testing.assert_array_equal(noop_mask(actions), [False, True, False, True, False, True, True])


def test_noop_mask_compares_with_the_previous_kept_step_not_the_previous_step():
    # step 1 is dropped; step 2's gripper (+1) differs from the last KEPT gripper (-1) -> kept
    actions = np.stack([_action((1, 0, 0), gripper=-1), _action(gripper=-1), _action(gripper=1), _action(gripper=1)])
    np.testing.assert_array_equal(noop_mask(actions), [True, False, True, False])
    assert noop_mask(np.stack([_action(gripper=1)] * 3)).tolist() == [False, False, False]


def test_quat_to_axis_angle_matches_known_rotations():
    half = np.sqrt(0.5)
    np.testing.assert_allclose(quat_to_axis_angle(np.array([0, 0, half, half])), [0, 0, np.pi / 2], atol=1e-7)
    np.testing.assert_allclose(quat_to_axis_angle(np.array([1.0, 0, 0, 0])), [np.pi, 0, 0], atol=1e-7)
    np.testing.assert_array_equal(quat_to_axis_angle(np.array([0, 0, 0, 1.0])), np.zeros(3))
    quat = np.array([0.1, -0.2, 0.3, 0.9])
    quat /= np.linalg.norm(quat)
    before = quat.copy()
    rotvec = quat_to_axis_angle(quat)
    np.testing.assert_array_equal(quat, before)  # robosuite's version clips its argument in place; ours must not
    np.testing.assert_allclose(np.linalg.norm(rotvec), 2 * np.arccos(quat[3]))
    np.testing.assert_allclose(rotvec / np.linalg.norm(rotvec), quat[:3] / np.linalg.norm(quat[:3]))


def test_libero_state_is_eef_pos_axis_angle_and_gripper():
    obs = {
        "robot0_eef_pos": np.array([0.1, 0.2, 0.3]),
        "robot0_eef_quat": np.array([1.0, 0, 0, 0]),
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
    }
    state = libero_state(obs)
    assert state.dtype == np.float32 and state.shape == (8,)
    np.testing.assert_allclose(state, [0.1, 0.2, 0.3, np.pi, 0, 0, 0.04, -0.04], rtol=1e-6)


def test_upright_rotates_180_degrees():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = upright(image)
    np.testing.assert_array_equal(out[0, 0], image[-1, -1])
    np.testing.assert_array_equal(upright(out), image)
    assert out.flags["C_CONTIGUOUS"]


def test_constants_follow_the_reference():
    assert SUITE_MAX_STEPS == {
        "libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400
    }  # fmt: skip
    assert NUM_STEPS_WAIT == 10
    np.testing.assert_array_equal(DUMMY_ACTION, [0, 0, 0, 0, 0, 0, -1])


def test_missing_assets_give_one_error_naming_the_path(tmp_path):
    pytest.importorskip("libero")
    with pytest.raises(LiberoSetupError, match=str(tmp_path / "nowhere")):
        resolve_assets_dir(tmp_path / "nowhere")


def test_setup_writes_config_before_libero_import_and_accepts_relative_assets(tmp_path, libero_assets_dir):
    relative = os.path.relpath(libero_assets_dir, REPO)
    script = (
        "import sys, yaml; from pathlib import Path; from vla.libero_env import setup_libero, list_tasks\n"
        f"assets = setup_libero({relative!r})\n"
        "config = yaml.safe_load((Path(sys.argv[1]) / 'config.yaml').read_text())\n"
        "import libero.libero\n"
        "assert config['assets'] == str(assets) == libero.libero.get_assets_path(), (config, assets)\n"
        "assert Path(config['bddl_files']).is_dir() and len(list_tasks('libero_spatial')) == 10\n"
        "assert 'tensorflow' not in sys.modules and 'robosuite' not in sys.modules\n"
    )
    env = {**os.environ, "LIBERO_CONFIG_PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True
    )  # stdin closed: LIBERO's input() prompt would fail with EOFError
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_list_tasks_on_a_fresh_machine_writes_the_config_or_names_the_missing_assets(tmp_path, libero_assets_dir):
    """With no LIBERO config.yaml yet, `list_tasks` writes it before LIBERO's import (which would otherwise wait on
    input(): a fresh node's guard_frames did); without findable assets it raises the setup error naming the fix."""
    script = "from vla.libero_env import list_tasks\nprint(len(list_tasks('libero_spatial')))\n"
    env = {**os.environ, "LIBERO_CONFIG_PATH": str(tmp_path / "fresh"), "VLA_LIBERO_ASSETS": str(libero_assets_dir)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and done.stdout.split()[-1] == "10", done.stderr[-2000:]
    assert (tmp_path / "fresh" / "config.yaml").is_file()
    env = {**env, "LIBERO_CONFIG_PATH": str(tmp_path / "other"), "VLA_LIBERO_ASSETS": str(tmp_path / "no_assets")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "LIBERO assets not found" in done.stderr and "EOFError" not in done.stderr


def test_simulation_modules_never_import_tensorflow():
    script = (
        "import sys, runpy; import vla.libero_env, vla.expert\n"
        "runpy.run_path('scripts/collect_demos.py', run_name='__mp_main__')\n"  # what a spawned worker re-imports
        "assert 'tensorflow' not in sys.modules, 'TF beside the LIBERO renderer segfaults'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


@pytest.mark.libero
@pytest.mark.slow
def test_pool_steps_in_parallel_reports_errors_and_survives_a_dead_worker(libero_assets_dir):
    from vla.env_pool import EnvPool

    with EnvPool("libero_spatial", 2, assets_dir=libero_assets_dir) as pool:
        first = pool.reset({0: ResetRequest(0, seed=1), 1: ResetRequest(0, seed=1, settle=False)})
        assert [first[w].error for w in (0, 1)] == [None, None]
        obs = first[0].obs
        for key in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot0_joint_pos"):
            assert key in obs
        assert obs["agentview_image"].shape == obs["robot0_eye_in_hand_image"].shape == (256, 256, 3)
        assert obs["agentview_image"].dtype == np.uint8
        assert {"akita_black_bowl_1_pos", "akita_black_bowl_1_quat", "plate_1_pos"} <= set(obs)
        assert obs["wooden_cabinet_1_top_side_pos"].shape == (3,)  # BDDL region sites: goal targets of libero_goal
        # same seed, same random placement; the settle steps let the bowl drop onto the table, worker 1 skipped them
        settled, placed = first[0].obs["akita_black_bowl_1_pos"], first[1].obs["akita_black_bowl_1_pos"]
        np.testing.assert_allclose(settled[:2], placed[:2], atol=0.01)
        assert settled[2] < placed[2] - 0.005
        up = np.array([0, 0, 1.0, 0, 0, 0, -1])
        for _ in range(3):
            results = pool.step({0: up, 1: DUMMY_ACTION})
        assert results[0].obs["robot0_eef_pos"][2] > first[0].obs["robot0_eef_pos"][2] + 0.01
        assert not results[1].done and results[1].error is None

        bad = pool.step({0: np.zeros(6), 1: DUMMY_ACTION})  # robosuite rejects a 6-dim action inside worker 0
        assert "Traceback" in bad[0].error and "action" in bad[0].error and not bad[0].obs
        assert bad[1].error is None
        again = pool.step({0: DUMMY_ACTION})  # the worker is alive; it wants a reset after the error
        assert "reset" in again[0].error
        assert pool.reset({0: ResetRequest(0, seed=1)})[0].error is None
        assert pool.step({0: DUMMY_ACTION})[0].error is None

        os.kill(pool._workers[1][0].pid, signal.SIGKILL)
        died = pool.step({1: DUMMY_ACTION})
        assert "died" in died[1].error
        assert pool.reset({1: ResetRequest(2, seed=3)})[1].error is None
        procs = [proc for proc, _ in pool._workers]
    assert not any(proc.is_alive() for proc in procs)


@pytest.mark.libero
def test_workers_die_with_their_parent(libero_assets_dir):
    script = (
        "import os, signal, sys\n"
        "from vla.env_pool import EnvPool\n"
        f"pool = EnvPool('libero_spatial', 2, assets_dir={libero_assets_dir!r}, cameras=())\n"
        "print('PIDS', *[p.pid for p, _ in pool._workers], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120)
    lines = [line.split()[1:] for line in done.stdout.decode().splitlines() if line.startswith("PIDS")]
    pids = [int(p) for p in lines[0]] if lines else []
    assert len(pids) == 2, done.stderr.decode()[-2000:]
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped) counts as dead
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.libero
def test_a_soft_reset_episode_does_not_depend_on_what_the_worker_ran_before(libero_assets_dir):
    """The default soft reset places the fixtures (task 4's cabinet) from the seed alone and starts the gripper's
    command afresh, so one fixed initial state gives the same episode on a fresh worker and on one that has just run
    another episode with the gripper closed: outcomes do not depend on the number of workers or their schedule."""
    from vla.env_pool import EnvPool
    from vla.libero_env import load_init_states

    init = load_init_states("libero_spatial", 4)
    actions = np.random.default_rng(0).uniform(-1, 1, (12, 7))

    def episode(pool, worker):
        trace = [pool.reset({worker: ResetRequest(4, init[1], seed=0)})[worker]]
        trace += [pool.step({worker: a})[worker] for a in actions]
        assert all(r.error is None for r in trace)
        return trace

    with EnvPool("libero_spatial", 2, assets_dir=libero_assets_dir, image_size=64, cameras=("agentview",)) as pool:
        assert pool.reset({1: ResetRequest(4, init[0], seed=0)})[1].error is None
        for _ in range(8):  # worker 1 closes its gripper, then starts the episode below
            assert pool.step({1: np.array([0, 0, 0.5, 0, 0, 0, 1.0])})[1].error is None
        fresh, after = episode(pool, 0), episode(pool, 1)
    for a, b in zip(fresh, after, strict=True):
        for key in ("robot0_eef_pos", "robot0_gripper_qpos", "akita_black_bowl_1_pos", "agentview_image"):
            np.testing.assert_array_equal(a.obs[key], b.obs[key], err_msg=key)


@pytest.mark.libero
def test_random_placements_put_objects_on_their_fixtures_in_a_soft_reset_pool(libero_assets_dir):
    """Demonstrations start from LIBERO's random placements (no init state). A soft reset would place the bowl of
    libero_spatial task 7 ("on the stove") from stale fixture data, ~0.9 m above the table: those resets are hard."""
    from vla.env_pool import EnvPool

    with EnvPool("libero_spatial", 1, assets_dir=libero_assets_dir, image_size=64, cameras=()) as pool:
        for episode in range(2):
            result = pool.reset({0: ResetRequest(7, None, seed=107000 + episode)})[0]
            assert result.error is None
            bowl, stove = result.obs["akita_black_bowl_1_pos"], result.obs["flat_stove_1_cook_region_pos"]
            assert np.linalg.norm(bowl[:2] - stove[:2]) < 0.3, (bowl, stove)
            assert 0.0 < bowl[2] - stove[2] < 0.2, (bowl, stove)


@pytest.mark.libero
def test_a_running_pool_keeps_its_host_to_one_blas_thread(libero_assets_dir):
    """The host's frame encoding and image preparation are small numpy matmuls from parallel threads; OpenBLAS's own
    threads would spin against the simulators (a 16-core collection ran at 69 steps/s with the host at 1,225 % CPU)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from vla.env_pool import EnvPool

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    with threadpool_limits(2, user_api="blas"):
        assert blas_threads() == {2}
        with EnvPool("libero_spatial", 1, assets_dir=libero_assets_dir, image_size=64, cameras=()) as pool:
            assert blas_threads() == {1}
            assert pool.reset({0: ResetRequest(0, None, seed=1)})[0].error is None
        assert blas_threads() == {2}  # restored when the pool closes


@pytest.mark.libero
def test_a_pools_obs_transform_runs_in_its_workers(libero_assets_dir):
    """`WorkerImages` travels to the spawned workers: the observation comes back with the 224² model image and video
    frame in place of the raw render, the same pixels the host makes from that render (numpy back-end)."""
    from vla.env_pool import EnvPool
    from vla.libero_env import load_init_states
    from vla.libero_io import POLICY_FRAME, POLICY_IMAGE, WorkerImages, libero_image

    request = ResetRequest(0, load_init_states("libero_spatial", 0)[0], seed=0, settle=False)
    results = []
    for transform in (None, WorkerImages(center_crop=True)):
        with EnvPool("libero_spatial", 1, assets_dir=libero_assets_dir, image_size=64, cameras=("agentview",),
                     obs_transform=transform) as pool:  # fmt: skip
            results.append(pool.reset({0: request})[0])
    raw, prepared = results
    assert raw.error is None and prepared.error is None, (raw.error, prepared.error)
    assert "agentview_image" not in prepared.obs and prepared.obs[POLICY_IMAGE].shape == (224, 224, 3)
    render = raw.obs["agentview_image"]
    np.testing.assert_array_equal(prepared.obs[POLICY_FRAME], libero_image(render, center_crop=False, backend="numpy"))
    np.testing.assert_array_equal(prepared.obs[POLICY_IMAGE], libero_image(render, center_crop=True, backend="numpy"))
    np.testing.assert_array_equal(prepared.obs["robot0_eef_pos"], raw.obs["robot0_eef_pos"])


@pytest.mark.libero
def test_workers_answering_over_big_pipes_give_the_same_episode(libero_assets_dir):
    """`answer_pipe_bytes` (vla.worker_pipes) changes how an observation travels, not what it holds: the same reset
    and actions give bit-equal two-camera observations over the socket pair and over the pipes, and a worker that dies
    is restarted over the pipes too."""
    from vla.env_pool import EnvPool
    from vla.worker_pipes import PIPE_BYTES, PipeChannel

    actions = np.random.default_rng(1).uniform(-1, 1, (5, 7))
    traces = []
    for answer_pipe_bytes in (None, PIPE_BYTES):
        with EnvPool("libero_spatial", 1, assets_dir=libero_assets_dir, answer_pipe_bytes=answer_pipe_bytes) as pool:
            assert isinstance(pool._workers[0][1], PipeChannel) == (answer_pipe_bytes is not None)
            trace = [pool.reset({0: ResetRequest(2, seed=3)})[0]] + [pool.step({0: a})[0] for a in actions]
            assert all(r.error is None for r in trace) and trace[0].obs["agentview_image"].shape == (256, 256, 3)
            traces.append(trace)
            if answer_pipe_bytes:
                pool._workers[0][0].kill()
                assert "died" in pool.step({0: actions[0]})[0].error
                assert pool.reset({0: ResetRequest(2, seed=3)})[0].error is None
    for a, b in zip(*traces, strict=True):
        for key in ("robot0_eef_pos", "agentview_image", "robot0_eye_in_hand_image"):
            np.testing.assert_array_equal(a.obs[key], b.obs[key], err_msg=key)


def test_bench_sim_times_the_protocols_episodes_or_collections(libero_assets_dir):
    """scripts/bench_sim.py's harness: `--jobs protocol` runs eval.py's episodes (each task's fixed initial states in
    order, env seed 0: soft resets), `--jobs random` collection's (random placements, tasks in turn: rebuilds)."""
    from types import SimpleNamespace

    from scripts_loader import load_script

    from vla.libero_env import list_tasks, load_init_states, setup_libero

    setup_libero(libero_assets_dir)
    bench = load_script("bench_sim")
    pool = SimpleNamespace(tasks=list_tasks("libero_spatial"))
    planned = bench.protocol_jobs("libero_spatial")
    assert len(planned) == 500
    protocol = planned[:60]
    expected = [(0, i) for i in range(50)] + [(1, i) for i in range(10)]
    assert [(job.task.task_id, job.key) for job in protocol] == expected
    states = load_init_states("libero_spatial", 1)
    for job in protocol[50:]:
        assert job.request.seed == 0 and job.request.task_id == 1
        np.testing.assert_array_equal(job.request.init_state, states[job.key])
    collection = list(itertools.islice(bench.random_jobs(pool), 12))
    assert [job.task.task_id for job in collection] == [*range(10), 0, 1]
    assert all(job.request.init_state is None for job in collection)
    assert len({job.request.seed for job in collection}) == 12


def test_bench_contention_times_calls_idle_and_beside_a_stepping_pool(
    libero_assets_dir, llama_tokenizer, monkeypatch, capsys
):
    """scripts/bench_contention.py (a CPU smoke run of the GPU benchmark): an idle row, the ratio baseline, then a row
    with the policy's calls timed while a spawned pool steps at the given niceness, and that pool's own rate."""
    from conftest import LLAMA2_DIR
    from scripts_loader import SCRIPTS, load_script

    command = [sys.executable, "scripts/bench_contention.py", "--tokenizer", str(LLAMA2_DIR), "--preset", "tiny",
               "--device", "cpu", "--workers", "1", "--seconds", "0.5", "--loads", "idle,none", "--nice", "3",
               "--batch", "1", "--libero_assets", libero_assets_dir]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rows = [line.split() for line in done.stdout.decode().splitlines() if line.split()[:1] in (["idle"], ["none"])]
    assert [(load, nice, batch) for load, nice, batch, *_ in rows] == [("idle", "0", "1"), ("none", "3", "1")]
    assert rows[0][-2:] == ["1.00x", "-"]  # the baseline: no load, no simulation rate
    for row in rows:
        assert int(row[3]) > 0 and float(row[4]) > 0  # calls were timed
    assert float(rows[1][-1]) > 0  # the load stepped while the calls ran
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the script imports bench_sim beside it
    with pytest.raises(SystemExit):
        load_script("bench_contention").parse_args(["--tokenizer", "x", "--loads", "none,idle"])
    assert "the first load must be idle" in capsys.readouterr().err


def test_guard_frames_writes_what_the_trained_checkpoint_guard_reads(tmp_path, libero_assets_dir):
    """scripts/guard_frames.py: the expert's fixed-state episodes, every n-th step's model image with its instruction
    ($VLA_GUARD_FRAMES of tests/test_fast_paths.py::test_fast_decoding_agrees_on_a_trained_checkpoint). Run as on a
    fresh node: no LIBERO config.yaml yet and stdin closed (the thirtieth session's node run stopped at LIBERO's
    input() prompt: the script listed the tasks before writing the config)."""
    from vla.libero_env import list_tasks

    out = tmp_path / "guard.npz"
    env = {**os.environ, "LIBERO_CONFIG_PATH": str(tmp_path / "libero_config")}
    done = subprocess.run(
        [sys.executable, "scripts/guard_frames.py", "--out", str(out), "--frames", "6", "--every", "5", "--workers",
         "1", "--libero_assets", str(libero_assets_dir)],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    data = np.load(out)
    assert data["images"].shape == (6, 224, 224, 3) and data["images"].dtype == np.uint8
    assert len({frame.tobytes() for frame in data["images"]}) == 6  # the arm moves between kept steps
    assert set(data["instructions"]) <= {task.language for task in list_tasks("libero_spatial")}

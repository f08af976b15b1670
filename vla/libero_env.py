"""LIBERO set-up (config.yaml, assets), suites and tasks, env creation, and the observation conventions of OpenVLA's
regenerated data (upright images, `state`, no-op steps). The parallel workers live in `vla.env_pool` (`EnvPool`,
`ResetRequest`, `StepResult`)."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Max policy steps per episode in OpenVLA's eval: 1.1x-1.2x the longest training demo of each suite.
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
NUM_STEPS_WAIT = 10  # objects fall ~7 cm after placement; the eval waits this many dummy steps before acting
DUMMY_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # no motion, gripper open
DUMMY_ACTION.setflags(write=False)
CAMERAS = ("agentview", "robot0_eye_in_hand")
ENV_ASSETS = "VLA_LIBERO_ASSETS"  # env var naming the assets folder (the PyPI libero ships none)
_REPO = Path(__file__).resolve().parents[1]


class LiberoSetupError(RuntimeError):
    """LIBERO is not installed or its assets / task files cannot be found."""


@dataclass(frozen=True)
class TaskInfo:
    """One task of a suite: `bddl_file` is the absolute path of its BDDL problem file."""

    task_id: int
    name: str
    language: str
    bddl_file: str


def _libero_package_dir() -> Path:
    try:
        spec = importlib.util.find_spec("libero.libero")
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        raise LiberoSetupError(
            "LIBERO is not installed: `pip install -e '.[libero]'` (libero==0.1.1, robosuite==1.4.0, mujoco==3.3.2)"
        )
    return Path(spec.origin).parent


def resolve_assets_dir(assets_dir: str | Path | None = None) -> Path:
    """The LIBERO assets folder: `assets_dir`, else `$VLA_LIBERO_ASSETS`, else LIBERO's own `libero/libero/assets`.
    A relative path is tried against the working directory, then against the repository root."""
    chosen = assets_dir if assets_dir is not None else os.environ.get(ENV_ASSETS)
    if chosen is None:
        path = _libero_package_dir() / "assets"
        source = "LIBERO's own assets folder"
    else:
        path = Path(chosen).expanduser()
        if not path.is_absolute() and not path.exists():
            path = _REPO / path
        source = "assets_dir" if assets_dir is not None else f"${ENV_ASSETS}"
    path = path.resolve()
    if not (path / "scenes").is_dir() or not (path / "stable_scanned_objects").is_dir():
        raise LiberoSetupError(
            f"LIBERO assets not found at {path} (from {source}; expected scenes/ and stable_scanned_objects/): pass "
            f"assets_dir= or set {ENV_ASSETS}, e.g. {ENV_ASSETS}=../shared/libero_assets on the project machines"
        )
    return path


def _config_file() -> Path:
    """The config.yaml LIBERO's import reads: `$LIBERO_CONFIG_PATH/config.yaml`, default `~/.libero/config.yaml`."""
    return Path(os.environ.get("LIBERO_CONFIG_PATH", str(Path("~/.libero").expanduser()))) / "config.yaml"


def setup_libero(assets_dir: str | Path | None = None) -> Path:
    """Write `$LIBERO_CONFIG_PATH/config.yaml` (default `~/.libero`) before `libero.libero` is imported (else its
    import blocks on `input()`), and point LIBERO at the assets. Idempotent; returns the assets folder."""
    import yaml

    package = _libero_package_dir()
    assets = resolve_assets_dir(assets_dir)
    config_file = _config_file()
    os.environ.setdefault("LIBERO_CONFIG_PATH", str(config_file.parent))  # the file LIBERO's import then reads
    config = {}
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text()) or {}
    wanted = {
        "benchmark_root": package,
        "bddl_files": package / "bddl_files",
        "init_states": package / "init_files",
        "datasets": package.parent / "datasets",
    }
    updated = dict(config)  # keep a user's own paths where they exist; fill in or repair the rest
    for key, path in wanted.items():
        if key not in updated or not Path(str(updated[key])).exists():
            updated[key] = str(path)
    updated["assets"] = str(assets)
    if updated != config:
        config_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = config_file.with_name(f"config.yaml.{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(updated))
        os.replace(tmp, config_file)
    import libero.libero

    libero.libero._assets_path_cache = str(assets)  # libero 0.1.1 reads assets from here, not from config.yaml
    return assets


def list_tasks(suite: str) -> list[TaskInfo]:
    """The tasks of `suite` in LIBERO's order (task order index 0). Imports no simulator (safe beside TensorFlow).
    Where LIBERO has no config.yaml yet (a fresh node), `setup_libero()` writes one first with the assets it
    resolves: else LIBERO's import would wait on `input()` (the thirtieth session's guard_frames on the node)."""
    check_suite(suite)
    if "libero.libero" not in sys.modules and not _config_file().is_file():
        setup_libero()  # raises LiberoSetupError naming the fix where no assets are found
    from libero.libero import benchmark

    bench = benchmark.get_benchmark_dict()[suite]()
    return [
        TaskInfo(i, bench.get_task(i).name, bench.get_task(i).language, str(bench.get_task_bddl_file_path(i)))
        for i in range(bench.n_tasks)
    ]


def load_init_states(suite: str, task_id: int) -> np.ndarray:
    """The benchmark's fixed initial sim states of one task, (50, state_dim) float64 (evaluation only)."""
    from libero.libero import benchmark, get_libero_path

    from vla.files import torch_load_arrays

    check_suite(suite)
    task = benchmark.get_benchmark_dict()[suite]().get_task(task_id)
    path = Path(get_libero_path("init_states")) / task.problem_folder / task.init_states_file
    # torch-saved NumPy arrays: read by torch's weights-only unpickler with NumPy's array constructors allowed, so a
    # replaced file cannot run code
    return np.asarray(torch_load_arrays(path, "re-install LIBERO (pip install --force-reinstall libero)"))


def check_suite(suite: str) -> None:
    if suite not in SUITE_MAX_STEPS:
        raise ValueError(f"unknown LIBERO suite {suite!r}: choose one of {sorted(SUITE_MAX_STEPS)}")


def make_env(bddl_file: str, *, image_size: int = 256, cameras: tuple[str, ...] = CAMERAS, hard_reset: bool = False):
    """An `OffScreenRenderEnv` (Panda, OSC_POSE, 20 Hz) rendering `cameras` at image_size²; `cameras=()` turns
    rendering off (~7x faster, for expert tuning). Only call in a process that has not imported TensorFlow.

    `hard_reset=False` (robosuite's soft reset) keeps the compiled model and the renderer across `reset()`; call
    `clear_soft_reset` after each reset. `True` is LIBERO's default: every reset rebuilds both from XML (11x slower),
    and places the fixtures (cabinets, stoves) from the previous placement, so where they stand depends on how many
    resets that env object made, not on `env.seed()` alone (docs/PERFORMANCE.md, "Soft resets")."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from libero.libero.envs import OffScreenRenderEnv

    return OffScreenRenderEnv(
        bddl_file_name=bddl_file,
        camera_heights=image_size,
        camera_widths=image_size,
        camera_names=list(cameras),
        use_camera_obs=bool(cameras),
        hard_reset=hard_reset,
    )


def clear_soft_reset(env) -> None:
    """What a soft reset keeps and a hard one rebuilds: each gripper's last command (robosuite ramps the fingers from
    it, so the next episode's first steps would start from the previous episode's grip) and the arm's last torques.
    With these cleared and the fixtures where a hard reset put them, soft and hard resets give bit-identical
    episodes (`scripts/check_soft_reset.py`)."""
    for robot in env.env.robots:
        robot.gripper.current_action = np.zeros(robot.gripper.dof)
        robot.torques = None


def upright(image: np.ndarray) -> np.ndarray:
    """Raw LIBERO render (H, W, 3) -> rotated 180° (H, W, 3): the orientation of OpenVLA's training images."""
    return np.ascontiguousarray(image[::-1, ::-1])


RECORDED_CAMERAS = {"agentview_image": "image", "robot0_eye_in_hand_image": "wrist_image"}  # render -> RLDS key


def upright_cameras(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An `EnvPool` obs_transform for demo collection: the renders (both cameras, or agentview alone) rotated 180°
    under their RLDS names (`image`, `wrist_image`), the raw ones dropped. Each simulator worker makes the copies, not
    the host (0.8 ms of its time a step on the CPU machine, docs/PERFORMANCE.md)."""
    out = {key: value for key, value in obs.items() if key not in RECORDED_CAMERAS}
    out.update({name: upright(obs[key]) for key, name in RECORDED_CAMERAS.items() if key in obs})
    return out


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis-angle (3,), angle in [0, 2π] (robosuite's `quat2axisangle`, which the
    regenerated LIBERO data used for `state`)."""
    w = float(np.clip(quat[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return np.asarray(quat[:3], dtype=np.float64) * 2.0 * np.arccos(w) / den


def libero_state(obs: dict[str, np.ndarray]) -> np.ndarray:
    """The RLDS `state` (8,) float32: eef position 3 + eef axis-angle 3 + gripper finger positions 2."""
    eef_axis_angle = quat_to_axis_angle(obs["robot0_eef_quat"])
    return np.concatenate([obs["robot0_eef_pos"], eef_axis_angle, obs["robot0_gripper_qpos"]]).astype(np.float32)


def noop_mask(actions: np.ndarray, threshold: float = 1e-4) -> np.ndarray:
    """(T, 7) LIBERO actions -> (T,) bool, True for the steps to KEEP. A step is a no-op, and dropped, when
    ‖a[:6]‖ < threshold and its gripper equals the previous kept step's gripper (for the first step: the norm test
    alone) — `is_noop` of OpenVLA's regenerate_libero_dataset.py."""
    keep = np.zeros(len(actions), dtype=bool)
    last_gripper = None
    for t, action in enumerate(np.asarray(actions, dtype=np.float64)):
        still = np.linalg.norm(action[:6]) < threshold
        if not (still and (last_gripper is None or action[6] == last_gripper)):
            keep[t], last_gripper = True, action[6]
    return keep

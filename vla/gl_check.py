"""The GL stack the simulation workers render with: which back-end and EGL device each worker uses, and a probe run
once in the main process before any worker starts, so a missing library is one clear error naming it and the fix
(not a MuJoCo trace from inside a worker)."""

from __future__ import annotations

import ctypes
import glob
import os
import subprocess
import sys
from dataclasses import dataclass

EGL_LIBRARIES = ("libEGL.so.1", "libOpenGL.so.0")  # glvnd's EGL dispatcher and OpenGL: what MuJoCo's EGL path loads
NVIDIA_EGL_VENDOR = "libEGL_nvidia.so.0"  # glvnd picks it through a vendor file in egl_vendor.d
VENDOR_DIRS = ("/usr/share/glvnd/egl_vendor.d", "/etc/glvnd/egl_vendor.d")
ENV_LIBRARIES = "VLA_GL_LIBRARIES"  # comma-separated override of the libraries checked (tests point it at bogus names)
FIX = (
    "fix: on the GPU machine unpack Debian's libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 packages with "
    "`dpkg -x PKG.deb /` then run `ldconfig`; on Debian/Ubuntu `apt-get install libegl1 libgl1-mesa-dri`; or render "
    "with MUJOCO_GL=osmesa (needs libosmesa6)"
)
PROBE = "import mujoco\nctx = mujoco.GLContext(16, 16)\nctx.make_current()\nctx.free()\nprint('ok')\n"


class GLSetupError(RuntimeError):
    """The GL stack the workers need cannot be loaded; the message names the library and the fix."""


@dataclass
class RenderConfig:
    """How simulation workers render (only when a camera is rendered at all)."""

    gl: str | None = None  # MuJoCo GL back-end of the workers: egl | osmesa; None: $MUJOCO_GL, else egl
    egl_devices: list[int] | None = None  # EGL device ids, workers spread round-robin; None: the visible CUDA GPUs


def cuda_devices() -> list[int]:
    """The GPU ids this process may use (CUDA_VISIBLE_DEVICES when it lists numbers, else 0..count-1; [] on CPU).
    Counted by torch (no CUDA context is created), else none."""
    try:
        import torch
    except ImportError:
        return []
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if ids and all(v.isdigit() for v in ids):
        return [int(v) for v in ids][:count]
    return list(range(count))


def devices_beside(policy_gpu: int | None) -> list[int] | None:
    """The EGL devices to render on beside a policy on CUDA device `policy_gpu` (its index among the visible GPUs):
    every other visible GPU, so that no render shares the policy's GPU; None (the default spread) where there is no
    other GPU or no policy on one. On one H100 each 256² render cost the policy's CUDA graphs ~1.6 ms, the GPU
    switching between the renderers' GL contexts and the policy's (scripts/bench_contention.py, PERFORMANCE.md)."""
    visible = cuda_devices()
    if policy_gpu is None or len(visible) < 2 or not 0 <= policy_gpu < len(visible):
        return None
    return [device for index, device in enumerate(visible) if index != policy_gpu]


def worker_gl_envs(num_workers: int, render: RenderConfig, devices: list[int] | None = None) -> list[dict[str, str]]:
    """Per worker, the environment variables it renders with: MUJOCO_GL / PYOPENGL_PLATFORM, and under EGL with GPUs
    an explicit MUJOCO_EGL_DEVICE_ID (worker i on device i mod #devices). `devices` None: `render.egl_devices`,
    else `cuda_devices()`."""
    gl = render.gl or os.environ.get("MUJOCO_GL") or "egl"
    if gl not in ("egl", "osmesa", "glfw"):
        raise ValueError(f"unknown GL back-end {gl!r}: use egl (GPU or Mesa) or osmesa (CPU)")
    if devices is None:
        devices = render.egl_devices if render.egl_devices is not None else cuda_devices()
    envs = []
    for i in range(num_workers):
        env = {"MUJOCO_GL": gl, "PYOPENGL_PLATFORM": gl}
        if gl == "egl" and devices:
            env["MUJOCO_EGL_DEVICE_ID"] = str(devices[i % len(devices)])
        envs.append(env)
    return envs


def _load(name: str) -> str | None:
    """None when `name` loads, else the loader's message."""
    try:
        ctypes.CDLL(name)
    except OSError as err:
        return str(err)
    return None


def _check_libraries(gl: str, nvidia: bool) -> None:
    if gl != "egl":
        return
    override = os.environ.get(ENV_LIBRARIES)
    names = [n for n in override.split(",") if n] if override else list(EGL_LIBRARIES)
    for name in names:
        problem = _load(name)
        if problem is not None:
            raise GLSetupError(f"MUJOCO_GL=egl needs {name}, which does not load ({problem}); {FIX}")
    if nvidia and not override:
        vendor_files = [f for d in VENDOR_DIRS for f in glob.glob(f"{d}/*nvidia*.json")]
        problem = _load(NVIDIA_EGL_VENDOR)
        if problem is not None or not (vendor_files or os.environ.get("__EGL_VENDOR_LIBRARY_FILENAMES")):
            raise GLSetupError(
                f"EGL on the GPU needs the NVIDIA EGL vendor ({NVIDIA_EGL_VENDOR} and a *nvidia*.json in "
                f"{' or '.join(VENDOR_DIRS)}): {problem or 'no vendor file'}; it comes with the NVIDIA driver "
                f"(libnvidia-egl / libegl-nvidia0), and glvnd itself as in the {FIX}"
            )


_checked: set[tuple[str, ...]] = set()


def check_gl(env: dict[str, str], timeout_s: float = 120.0) -> None:
    """Raise GLSetupError unless a worker with environment `env` (one of `worker_gl_envs`) can create a MuJoCo GL
    context: the libraries are loaded here with ctypes, then a tiny context is made in a short subprocess (a broken
    driver may crash the process that tries). Each distinct `env` is checked once per process."""
    key = tuple(sorted(env.items()))
    if key in _checked:
        return
    _check_libraries(env.get("MUJOCO_GL", "egl"), nvidia="MUJOCO_EGL_DEVICE_ID" in env)
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
            timeout=timeout_s,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise GLSetupError(f"creating a MuJoCo GL context with {env} hung for {timeout_s:.0f} s; {FIX}") from err
    if done.returncode != 0 or "ok" not in done.stdout:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise GLSetupError(f"MuJoCo cannot create a GL context with {env}:\n{tail}\n{FIX}")
    _checked.add(key)

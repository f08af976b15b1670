"""The GL probe fails in the main process with one message naming the library and the fix; workers get an explicit
EGL device each, spread over the GPUs."""

import pytest

from vla import gl_check
from vla.gl_check import GLSetupError, RenderConfig, check_gl, worker_gl_envs


def test_a_missing_egl_library_is_named_with_the_fix(monkeypatch):
    monkeypatch.setenv(gl_check.ENV_LIBRARIES, "libEGL_does_not_exist.so.1")
    with pytest.raises(GLSetupError) as err:
        check_gl({"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", "probe": "missing-lib"})
    message = str(err.value)
    assert "libEGL_does_not_exist.so.1" in message
    assert "dpkg -x" in message and "apt-get install libegl1 libgl1-mesa-dri" in message


def test_a_gl_context_that_cannot_be_made_is_one_error_not_a_worker_trace(monkeypatch):
    pytest.importorskip("mujoco")
    monkeypatch.setenv(gl_check.ENV_LIBRARIES, "libc.so.6")  # the libraries load; the context itself fails
    with pytest.raises(GLSetupError, match="cannot create a GL context") as err:
        check_gl({"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", "MUJOCO_EGL_DEVICE_ID": "99"})
    assert "apt-get install" in str(err.value)


def test_workers_spread_over_the_egl_devices():
    envs = worker_gl_envs(5, RenderConfig(gl="egl"), devices=[0, 1])
    assert [e["MUJOCO_EGL_DEVICE_ID"] for e in envs] == ["0", "1", "0", "1", "0"]
    assert all(e["MUJOCO_GL"] == e["PYOPENGL_PLATFORM"] == "egl" for e in envs)
    assert [e["MUJOCO_EGL_DEVICE_ID"] for e in worker_gl_envs(2, RenderConfig(gl="egl", egl_devices=[3]))] == ["3"] * 2
    assert "MUJOCO_EGL_DEVICE_ID" not in worker_gl_envs(1, RenderConfig(gl="egl"), devices=[])[0]  # CPU: Mesa
    assert "MUJOCO_EGL_DEVICE_ID" not in worker_gl_envs(1, RenderConfig(gl="osmesa"), devices=[0])[0]
    with pytest.raises(ValueError, match="osmesa"):
        worker_gl_envs(1, RenderConfig(gl="wgl"))


def test_cuda_devices_follow_cuda_visible_devices(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert gl_check.cuda_devices() == [4, 6]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gl_check.cuda_devices() == [0, 1]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert gl_check.cuda_devices() == []


def test_a_vla_on_cuda_gets_renders_on_the_other_gpus(monkeypatch):
    """eval.py without --egl_devices: where other GPUs are visible the workers render there, not on the VLA's GPU
    (each render there slowed its calls ~1.6 ms, bench_contention); one GPU, a CPU policy or explicit devices: as
    before."""
    from types import SimpleNamespace

    torch = pytest.importorskip("torch")
    from vla.evaluation import EvalConfig, render_config

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    on = lambda device: SimpleNamespace(vla=SimpleNamespace(device=torch.device(device)))  # noqa: E731
    assert render_config(EvalConfig(), on("cuda:0")).egl_devices == [6]
    assert render_config(EvalConfig(), on("cuda:1")).egl_devices == [4]
    assert render_config(EvalConfig(), on("cuda")).egl_devices == [6]  # the current device: 0
    assert render_config(EvalConfig(egl_devices=[4]), on("cuda:0")).egl_devices == [4]  # the user's choice stands
    assert render_config(EvalConfig(), on("cpu")).egl_devices is None
    assert render_config(EvalConfig(policy="expert"), SimpleNamespace()).egl_devices is None
    assert [env["MUJOCO_EGL_DEVICE_ID"] for env in
            gl_check.worker_gl_envs(3, render_config(EvalConfig(), on("cuda:1")))] == ["4", "4", "4"]  # fmt: skip
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    assert render_config(EvalConfig(), on("cuda:0")).egl_devices is None  # one GPU: it renders too

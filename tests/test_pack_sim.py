"""The offline simulation bundle (scripts/pack_sim.py): untraced suites are refused; a libero_spatial bundle packed
from this environment runs every task of the suite with robosuite/libero/mujoco imported from the bundle alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from vla.sim_bundle import BUNDLED, SUITES, MissingFileListError, read_file_list

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import pack_sim  # noqa: E402


def test_untraced_suite_is_refused_naming_the_trace_command(tmp_path):
    cfg = pack_sim.parse_args(["--suites", "libero_90", "--out", str(tmp_path / "b"), "--from_installed"])
    with pytest.raises(SystemExit) as exit_info:
        pack_sim.main(cfg)
    assert "python scripts/trace_sim_files.py --suites libero_90" in str(exit_info.value)
    assert not (tmp_path / "b").exists()  # refused before any work


@pytest.mark.parametrize("suite", SUITES)
def test_committed_file_lists_are_well_formed(suite):
    entries = read_file_list(suite)
    assert entries == sorted(set(entries))
    assert all(e.startswith(("site/", "assets/")) and ".." not in e and "__pycache__" not in e for e in entries)
    assert any(e.startswith("assets/scenes/") for e in entries) and any(e.endswith(".bddl") for e in entries)


def test_read_file_list_error_type(tmp_path, monkeypatch):
    monkeypatch.setattr("vla.sim_bundle.SIM_FILES_DIR", tmp_path)
    with pytest.raises(MissingFileListError, match="trace_sim_files.py --suites libero_spatial"):
        read_file_list("libero_spatial")


def test_unused_mujoco_and_opengl_parts_are_left_out():
    from vla.sim_bundle import _keep

    for rel in [
        "mujoco/plugin/libsdf.so",
        "mujoco/_simulate.cpython-312-x86_64-linux-gnu.so",
        "mujoco/viewer.py",
        "mujoco/include/mujoco/mujoco.h",
        "OpenGL/DLLS/freeglut64.vc15.dll",
        "OpenGL/raw/GLES2/_types.py",
        "OpenGL/GLUT/__init__.py",
        "OpenGL/WGL/__init__.py",
    ]:
        assert not _keep(rel, set()), rel
    for rel in [
        "mujoco/__init__.py",
        "mujoco/libmujoco.so.3.3.2",
        "mujoco/egl/__init__.py",
        "mujoco/renderer.py",
        "OpenGL/EGL/__init__.py",
        "OpenGL/raw/GL/_types.py",
        "OpenGL/GLU/__init__.py",
        "OpenGL/GLX/__init__.py",
    ]:
        assert _keep(rel, set()), rel


def test_png_for_xz_is_lossless_and_compresses_better():
    import io
    import lzma

    import numpy as np
    from PIL import Image

    from vla.sim_archive import optimize_png

    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(-2, 3, size=(128, 128, 3)), axis=1) + np.arange(128)[:, None, None]
    pixels = (smooth % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    original = buf.getvalue()
    for for_xz in (False, True):
        packed = optimize_png(original, for_xz=for_xz)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(packed))), pixels)
        assert len(lzma.compress(packed, preset=6)) <= len(lzma.compress(original, preset=6))


# The child: every task of the suite from the bundle; reports where the simulator packages came from.
_CHILD = """
import json, sys
import numpy as np
from vla.libero_env import DUMMY_ACTION, list_tasks, load_init_states, make_env, setup_libero
setup_libero()
tasks = list_tasks("libero_spatial")
for task in tasks:
    env = make_env(task.bddl_file, image_size=32, cameras=("agentview",))
    env.reset()
    obs = env.set_init_state(load_init_states("libero_spatial", task.task_id)[0])
    obs, reward, done, info = env.step(np.array(DUMMY_ACTION))
    assert obs["agentview_image"].shape == (32, 32, 3), obs["agentview_image"].shape
    env.close()
import bddl, libero, mujoco, OpenGL, robosuite
mods = {m.__name__: m.__file__ for m in (bddl, libero, mujoco, OpenGL, robosuite)}
print("RESULT " + json.dumps({"tasks": len(tasks), "modules": mods}))
"""


def _shadow_site(root: Path) -> Path:
    """This environment's site-packages without the bundled distributions: symlinks to every other top-level entry
    (what the GPU image provides: numpy, torch, ...)."""
    site = Path(sysconfig.get_paths()["purelib"])
    hidden = set()
    for name in BUNDLED:
        for file in metadata.distribution(name).files or []:
            if ".." not in file.parts:
                hidden.add(file.parts[0])
    root.mkdir()
    for entry in site.iterdir():
        if entry.name not in hidden and not entry.name.endswith(".pth"):
            (root / entry.name).symlink_to(entry)
    return root


@pytest.mark.libero
@pytest.mark.slow
def test_spatial_bundle_runs_every_task_alone(tmp_path, libero_assets_dir):
    bundle = tmp_path / "bundle"
    cfg = pack_sim.parse_args(
        ["--suites", "libero_spatial", "--out", str(bundle), "--from_installed", "--gl", "none"]
        + ["--archive", "false", "--wheel_cache", str(tmp_path / "cache"), "--assets_dir", libero_assets_dir]
    )
    manifest = pack_sim.main(cfg)
    assert manifest["total_bytes"] < 100 * 2**20  # robosuite alone is ~590 MB installed
    assert not (bundle / "site" / "robosuite" / "models" / "assets" / "robots" / "sawyer").exists()  # untraced

    shadow = _shadow_site(tmp_path / "image_site")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VLA_", "LIBERO_", "MUJOCO_"))}
    env.update(PYTHONPATH=f"{REPO}:{shadow}", VLA_PYTHON=sys.executable, HOME=str(tmp_path))
    script = f'source "{bundle}/activate.sh" && exec "{sys.executable}" -S -s -c "$CHILD"'
    env["CHILD"] = _CHILD
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["tasks"] == 10
    for name, path in result["modules"].items():
        assert path.startswith(str(bundle / "site")), (name, path)
    assert (bundle / "libero_config" / "config.yaml").is_file()  # LIBERO's config went into the bundle


def test_activate_refuses_another_python(tmp_path):
    from vla.sim_bundle import ACTIVATE

    (tmp_path / "activate.sh").write_text(ACTIVATE.format(suites="libero_spatial", python="2.7"))
    proc = subprocess.run(
        ["bash", "-c", f'source "{tmp_path}/activate.sh"; echo "rc=$?"'],
        env={**os.environ, "VLA_PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert "bundle's packages are for Python 2.7" in proc.stderr
    assert "rc=1" in proc.stdout

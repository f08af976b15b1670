"""Regenerate the traced file lists of the offline simulation bundle (vla/sim_files/<suite>.txt).

    python scripts/trace_sim_files.py --suites libero_spatial libero_object libero_goal libero_10

For each suite a child process runs, under `strace`, what evaluation and demo collection do with every task of the
suite: list the tasks, load the fixed initial states, create the env (two 256² cameras), reset (random placement),
set an initial state, step once, close. MuJoCo opens meshes and textures from C, which Python's audit hooks never
see, so the opens are read from the kernel's side (`openat`). Every opened file under site-packages that belongs to a
package the bundle trims (robosuite, libero) and every opened file under the LIBERO assets folder is written to the
list, as `site/<path relative to site-packages>` or `assets/<path relative to the assets folder>`. `.py` files are not
listed: the bundle keeps every module of the pure packages. Needs `strace` (`apt-get install -y strace`), LIBERO
installed, and the assets (VLA_LIBERO_ASSETS). Takes ~1 min per suite on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vla.sim_bundle import SIM_FILES_DIR, SUITES, TRIMMED_PACKAGES, write_file_list  # noqa: E402

_SYSCALLS = "open,openat,openat2"


def run_suite(suite: str) -> None:
    """The child: what one suite's simulation does with every task (runs under strace)."""
    import numpy as np

    from vla.libero_env import DUMMY_ACTION, list_tasks, load_init_states, make_env, setup_libero

    setup_libero()
    for task in list_tasks(suite):
        init_states = load_init_states(suite, task.task_id)
        env = make_env(task.bddl_file)
        env.seed(0)
        env.reset()
        env.set_init_state(init_states[0])
        env.step(np.array(DUMMY_ACTION))
        env.close()
        print(f"traced {suite} task {task.task_id}: {task.name}", flush=True)


def opened_paths(strace_log: Path) -> set[str]:
    """Every path an open syscall named. Failed opens are dropped later by testing that the file exists; strace's
    split `<unfinished ...>` lines keep the path on their first half, so no line pairing is needed."""
    paths = set()
    for line in strace_log.read_text(errors="replace").splitlines():
        start = line.find('"')
        if start < 0 or not any(f"{name}(" in line for name in _SYSCALLS.split(",")):
            continue
        end = line.find('"', start + 1)
        paths.add(line[start + 1 : end])
    return paths


def classify(paths: set[str], site: Path, assets: Path) -> list[str]:
    """The bundle entries among `paths`: existing regular files under the trimmed packages or the assets folder."""
    entries = set()
    roots = {"site": [site, site.resolve()], "assets": [assets, assets.resolve()]}
    for raw in paths:
        path = Path(os.path.normpath(os.path.abspath(raw)))  # robosuite opens "controllers/../controllers/..."
        if not path.is_file() or "__pycache__" in path.parts:  # numba's on-disk cache is written, not shipped
            continue
        for kind, candidates in roots.items():
            rel = next((p for p in (_relative(path, c) for c in candidates) if p is not None), None)
            if rel is None:
                rel = next((p for p in (_relative(path.resolve(), c) for c in candidates) if p is not None), None)
            if rel is None:
                continue
            if kind == "site" and (rel.parts[0] not in TRIMMED_PACKAGES or rel.suffix in (".py", ".pyc")):
                break
            entries.add(f"{kind}/{rel.as_posix()}")
            break
    return sorted(entries)


def _relative(path: Path, root: Path) -> Path | None:
    try:
        return path.relative_to(root)
    except ValueError:
        return None


def trace(suite: str, out_dir: Path) -> Path:
    from vla.libero_env import resolve_assets_dir

    if shutil.which("strace") is None:
        sys.exit("strace not found: apt-get install -y strace")
    assets = resolve_assets_dir()
    site = Path(sysconfig.get_paths()["purelib"])
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "strace.log"
        cmd = ["strace", "-f", "-qq", "-e", f"trace={_SYSCALLS}", "-o", str(log)]
        cmd += [sys.executable, __file__, "--child", suite]
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONPATH": str(REPO)}
        env.setdefault("PYOPENGL_PLATFORM", "egl")
        subprocess.run(cmd, check=True, env=env)
        entries = classify(opened_paths(log), site, assets)
    import libero
    import mujoco
    import robosuite

    versions = {"mujoco": mujoco.__version__, "robosuite": robosuite.__version__, "libero": _dist_version(libero)}
    return write_file_list(out_dir / f"{suite}.txt", suite, entries, versions)


def _dist_version(module) -> str:
    from importlib.metadata import version

    return version(module.__name__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    parser.add_argument("--out_dir", type=Path, default=SIM_FILES_DIR)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_suite(args.child)
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for suite in args.suites:
        path = trace(suite, args.out_dir)
        lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
        print(json.dumps({"suite": suite, "list": str(path), "files": len(lines)}), flush=True)


if __name__ == "__main__":
    main()

"""Offline simulation bundle (scripts/pack_sim.py): everything a GPU node without network needs to run LIBERO
simulation, evaluation and demo collection for chosen suites, in one folder a user activates with one line.

A bundle folder holds
  site/           the distributions the GPU image lacks, unpacked (goes on PYTHONPATH). robosuite, libero and bddl
                  keep every `.py` but only the data files the suites open (vla/sim_files/<suite>.txt, traced by
                  scripts/trace_sim_files.py); robosuite's wheel alone is ~193 MB, the traced part ~40 MiB.
  libero_assets/  the LIBERO asset files the suites open (VLA_LIBERO_ASSETS), PNGs re-encoded losslessly.
  gl/             Debian's GL loader libraries (glvnd), found through LD_LIBRARY_PATH: the image lacks them.
  activate.sh     `source DIR/activate.sh`: checks the Python version, sets the environment.
  MANIFEST.json   what was packed, from where, and the sizes.
Identical files are hard links, so an archive stores them once.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from vla.sim_archive import cached_png, make_archive

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
SIM_FILES_DIR = Path(__file__).resolve().parent / "sim_files"
TRACE_COMMAND = "python scripts/trace_sim_files.py --suites {suite}"
# Packages whose data files are trimmed to the traced lists (their .py files all stay).
TRIMMED_PACKAGES = ("robosuite", "libero", "bddl")
# What the GPU image lacks for simulation + our scripts (measured there), pinned as in pyproject's `libero` extra.
# The image has numpy, scipy, numba, opencv-headless, pyyaml, cloudpickle, typing_extensions, torch, pillow.
BUNDLED = {
    "mujoco": "3.3.2",  # its glfw requirement is not needed under EGL
    "robosuite": "1.4.0",
    "libero": "0.1.1",
    "bddl": "1.0.1",
    "easydict": "1.14",
    "gymnasium": "1.4.0",
    "farama-notifications": "0.0.6",
    "PyOpenGL": "3.1.10",
    "termcolor": "3.3.0",
    "future": "1.0.0",
    "draccus": "0.11.6",
    "threadpoolctl": "3.6.0",
    "mergedeep": "1.3.4",
    "toml": "0.10.2",
    "typing-inspect": "0.9.0",
    "mypy-extensions": "1.2.0",
}
# Parts of mujoco and PyOpenGL that LIBERO simulation under EGL never imports or loads (checked with sys.modules
# after creating, resetting and stepping tasks, and by running tests/test_pack_sim.py's bundle without them):
# mujoco's C headers, plugin libraries (loaded at import when present; no LIBERO/robosuite model declares a
# <plugin> or <extension>), the interactive viewer (_simulate), rollout, USD export, introspection and test data;
# PyOpenGL's Windows DLLs and WGL, macOS AGL, OpenGL ES, GLUT, GLE and Tk bindings.
UNUSED_MUJOCO = {"include", "plugin", "usd", "introspect", "testdata", "viewer", "rollout", "_simulate", "_rollout"}
UNUSED_OPENGL = {"DLLS", "WGL", "AGL", "GLES1", "GLES2", "GLES3", "GLUT", "GLE", "Tk"}
UNUSED_OPENGL |= {f"raw/{name}" for name in UNUSED_OPENGL}
# `xz -9e` with a 128 MiB dictionary: an unpacked bundle is 100-300 MiB, so xz's 64 MiB at -9 misses repeats
# further apart. Unpacking needs ~130 MiB of memory, packing ~1.4 GiB.
SDIST_ONLY = ("libero", "bddl")  # no wheels on PyPI: built here into pure-Python wheels
GL_PACKAGES = ("libegl1", "libgl1", "libgles2", "libglvnd0", "libglx0", "libopengl0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


class MissingFileListError(RuntimeError):
    """A suite has no traced file list in vla/sim_files."""


@dataclass
class BundleConfig:
    suites: list[str]
    out: Path
    python_version: str | None = None  # default: 3.12 (the GPU image), or this interpreter's with from_installed
    wheel_cache: Path | None = None  # downloads, built wheels and optimized PNGs are kept and reused here
    from_installed: bool = False  # copy the packages from this environment instead of downloading wheels
    gl: str = "apt"  # "apt": Debian's GL loader .debs via `apt-get download`; "none": leave them out
    archive: bool = True  # also write <out>.tar.xz
    optimize_png: bool = True
    assets_dir: Path | None = None  # default: $VLA_LIBERO_ASSETS (vla.libero_env.resolve_assets_dir)

    def resolved_python(self) -> str:
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if self.from_installed:
            if self.python_version not in (None, here):
                raise ValueError(f"--from_installed copies this Python {here}'s packages: drop --python_version")
            return here
        return self.python_version or "3.12"


def file_list_path(suite: str) -> Path:
    return SIM_FILES_DIR / f"{suite}.txt"


def read_file_list(suite: str) -> list[str]:
    """The traced entries of `suite` (`site/...`, `assets/...`); refuses a suite that was never traced."""
    path = file_list_path(suite)
    if not path.is_file():
        raise MissingFileListError(
            f"no traced file list for suite {suite!r} ({path} is missing): trace it first with "
            f"`{TRACE_COMMAND.format(suite=suite)}` (needs strace, LIBERO and its assets), then pack again"
        )
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def write_file_list(path: Path, suite: str, entries: list[str], versions: dict[str, str]) -> Path:
    header = [
        f"# Files the LIBERO simulation of {suite} opens (every task: create, reset, set_init_state, step).",
        f"# Regenerate: {TRACE_COMMAND.format(suite=suite)}",
        "# " + " ".join(f"{k}=={v}" for k, v in sorted(versions.items())),
    ]
    path.write_text("\n".join(header + entries) + "\n")
    return path


# ---- package sources: (path relative to site-packages, reader of its bytes) ----

Entry = tuple[str, Callable[[], bytes]]


def _installed_entries(name: str) -> Iterator[Entry]:
    dist = metadata.distribution(name)
    for file in dist.files or []:
        if ".." in file.parts:  # console scripts and the like live outside site-packages
            continue
        path = Path(dist.locate_file(file))
        if path.is_file():
            yield file.as_posix(), path.read_bytes


def _wheel_entries(wheel: Path) -> Iterator[Entry]:
    archive = zipfile.ZipFile(wheel)
    for info in archive.infolist():
        if info.is_dir():
            continue
        parts = PurePosixPath(info.filename).parts
        if parts[0].endswith(".data"):  # <name>.data/{purelib,platlib}/x installs as x; scripts/headers are dropped
            if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                continue
            parts = parts[2:]
        yield "/".join(parts), (lambda name=info.filename: archive.read(name))


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _fetch_wheel(name: str, version: str, python_version: str, cache: Path) -> Path:
    """The wheel of name==version for python_version, from `cache` or downloaded (built, for sdist-only ones)."""
    tag = "cp" + python_version.replace(".", "")
    for wheel in sorted(cache.glob("*.whl")):
        wname, wversion, *_, pytag, _abi, _plat = wheel.stem.split("-")
        if _norm(wname) == _norm(name) and wversion == version and (pytag == tag or pytag.startswith("py")):
            return wheel
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    if name in SDIST_ONLY:  # pure Python: a wheel built here is valid for every Python 3
        cmd = pip + ["wheel", "--no-deps", "-w", str(cache), f"{name}=={version}"]
    else:
        cmd = pip + ["download", "--no-deps", "--only-binary=:all:", "--python-version", python_version]
        cmd += ["--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(cache)]
        cmd += [f"{name}=={version}"]
    print("  $", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return _fetch_wheel(name, version, python_version, cache)


def _keep(rel: str, traced_site: set[str]) -> bool:
    """Which files of a distribution go into site/: no bytecode, no test suites; for the trimmed packages
    only .py files and the traced data files."""
    parts = PurePosixPath(rel).parts
    if "__pycache__" in parts or rel.endswith((".pyc", ".dist-info/RECORD")):
        return False
    if parts[0] == "tests":  # draccus ships its test suite as a top-level `tests` package, which would shadow ours
        return False
    if parts[0] == "mujoco" and (rel.endswith("_test.py") or parts[1].split(".")[0] in UNUSED_MUJOCO):
        return False  # unit tests, C headers, and parts no LIBERO simulation imports or loads (UNUSED_MUJOCO)
    if parts[0] == "OpenGL" and ("/".join(parts[1:2]) in UNUSED_OPENGL or "/".join(parts[1:3]) in UNUSED_OPENGL):
        return False
    if parts[0] in TRIMMED_PACKAGES:
        return rel.endswith(".py") or rel in traced_site
    return True


def site_entries(cfg: BundleConfig, traced_site: set[str], cache: Path) -> tuple[dict[str, Entry], dict[str, str]]:
    """{relative path: entry} of site/, and {distribution: version or source}."""
    chosen, sources = {}, {}
    for name, version in BUNDLED.items():
        if cfg.from_installed:
            entries, sources[name] = _installed_entries(name), f"installed {metadata.version(name)}"
        else:
            wheel = _fetch_wheel(name, version, cfg.resolved_python(), cache)
            entries, sources[name] = _wheel_entries(wheel), wheel.name
        for rel, read in entries:
            if _keep(rel, traced_site):
                chosen[rel] = (rel, read)
    missing = sorted(traced_site - set(chosen))
    if missing:
        raise FileNotFoundError(f"traced files absent from the packages: {missing[:5]} ... ({len(missing)})")
    return chosen, sources


# ---- GL loader libraries ----


def gl_libraries(cache: Path) -> dict[str, bytes | str]:
    """{file name: bytes, or the target name for a symlink} of the shared libraries in Debian's GL .debs
    (downloaded into cache/gl with `apt-get download` unless already there) plus their copyright files."""
    debs = cache / "gl"
    debs.mkdir(parents=True, exist_ok=True)
    wanted = [p for p in GL_PACKAGES if not list(debs.glob(f"{p}_*.deb"))]
    if wanted:
        print(f"  $ apt-get download {' '.join(wanted)}", flush=True)
        subprocess.run(["apt-get", "download", *wanted], cwd=debs, check=True)
    files: dict[str, bytes | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        root = Path(tmp)
        for path in sorted((root / "usr/lib/x86_64-linux-gnu").glob("*.so*")):
            files[path.name] = os.readlink(path) if path.is_symlink() else path.read_bytes()
        for path in sorted((root / "usr/share/doc").glob("*/copyright")):
            files[f"doc/{path.parent.name}.copyright"] = path.read_bytes()
    return files


# ---- the bundle ----

ACTIVATE = """\
# Source me: `source {{DIR}}/activate.sh` (bash). Written by scripts/pack_sim.py for suites: {suites}.
_vla_sim_dir="$(cd "$(dirname "${{BASH_SOURCE[0]:-$0}}")" && pwd)"
_vla_sim_py="${{VLA_PYTHON:-python}}"
command -v "$_vla_sim_py" >/dev/null 2>&1 || _vla_sim_py=python3
_vla_sim_have="$("$_vla_sim_py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
if [ "$_vla_sim_have" != "{python}" ]; then
    echo "activate.sh: this bundle's packages are for Python {python}, but '$_vla_sim_py' is Python" \\
        "${{_vla_sim_have:-(not found)}}: put Python {python} first on PATH (or name it in VLA_PYTHON), or rebuild" \\
        "the bundle with: python scripts/pack_sim.py --python_version $_vla_sim_have --suites {suites} --out DIR" >&2
    return 1 2>/dev/null || exit 1
fi
case ":${{PYTHONPATH:-}}:" in *":$_vla_sim_dir/site:"*) ;; *) export PYTHONPATH="$_vla_sim_dir/site${{PYTHONPATH:+:$PYTHONPATH}}" ;; esac
if [ -d "$_vla_sim_dir/gl" ]; then
    case ":${{LD_LIBRARY_PATH:-}}:" in *":$_vla_sim_dir/gl:"*) ;; *) export LD_LIBRARY_PATH="$_vla_sim_dir/gl${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" ;; esac
fi
export VLA_LIBERO_ASSETS="$_vla_sim_dir/libero_assets"
export LIBERO_CONFIG_PATH="$_vla_sim_dir/libero_config"  # LIBERO's config.yaml, pointing into this bundle
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
echo "vla sim bundle ({suites}; Python {python}) active: PYTHONPATH, VLA_LIBERO_ASSETS, MUJOCO_GL=egl set" >&2
unset _vla_sim_dir _vla_sim_py _vla_sim_have
"""


class _Writer:
    """Writes files into the bundle, hard-linking identical contents and counting sizes per top folder."""

    def __init__(self, root: Path):
        self.root, self.by_hash, self.sizes = root, {}, {}

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(data).digest()
        if digest in self.by_hash:
            os.link(self.by_hash[digest], path)
            return
        path.write_bytes(data)
        self.by_hash[digest] = path
        top = rel.split("/")[0] + "/" if "/" in rel else rel
        self.sizes[top] = self.sizes.get(top, 0) + len(data)

    def symlink(self, rel: str, target: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)


def pack(cfg: BundleConfig) -> dict:
    """Write the bundle into cfg.out (which must not exist or be empty); returns the manifest."""
    lists = {suite: read_file_list(suite) for suite in cfg.suites}  # refuse an untraced suite before any work
    python = cfg.resolved_python()
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose a new --out folder or delete it")
    cache = Path(cfg.wheel_cache or Path(tempfile.mkdtemp(prefix="vla-sim-cache-")))
    cache.mkdir(parents=True, exist_ok=True)
    entries = sorted(set().union(*lists.values()))
    traced_site = {e.split("/", 1)[1] for e in entries if e.startswith("site/")}
    traced_assets = [e.split("/", 1)[1] for e in entries if e.startswith("assets/")]
    if cfg.assets_dir is not None:
        assets_dir = Path(cfg.assets_dir)
    else:
        from vla.libero_env import resolve_assets_dir

        assets_dir = resolve_assets_dir()
    print(f"packing {', '.join(cfg.suites)} for Python {python} into {out} (cache {cache})", flush=True)

    writer = _Writer(out)
    site, sources = site_entries(cfg, traced_site, cache)
    for rel in sorted(site):
        writer.write(f"site/{rel}", site[rel][1]())
    print(f"  site/: {len(site)} files from {len(sources)} distributions", flush=True)

    png_before = png_after = 0
    for rel in traced_assets:
        data = (assets_dir / rel).read_bytes()
        if cfg.optimize_png and rel.endswith(".png"):
            png_before, data = png_before + len(data), cached_png(data, cache, for_xz=cfg.archive)
            png_after += len(data)
        writer.write(f"libero_assets/{rel}", data)
    for needed in ("scenes", "stable_scanned_objects"):  # vla.libero_env checks these folders exist
        (out / "libero_assets" / needed).mkdir(parents=True, exist_ok=True)
    print(f"  libero_assets/: {len(traced_assets)} files; PNGs {png_before / 2**20:.1f} -> {png_after / 2**20:.1f} MiB")

    if cfg.gl == "apt":
        for name, content in gl_libraries(cache).items():
            if isinstance(content, str):
                writer.symlink(f"gl/{name}", content)
            else:
                writer.write(f"gl/{name}", content)
        print(f"  gl/: {', '.join(GL_PACKAGES)}", flush=True)
    elif cfg.gl != "none":
        raise ValueError(f"gl must be 'apt' or 'none', not {cfg.gl!r}")

    (out / "libero_config").mkdir(exist_ok=True)
    activate = ACTIVATE.format(suites=" ".join(cfg.suites), python=python)
    writer.write("activate.sh", activate.encode())
    manifest = {
        "suites": list(cfg.suites),
        "python": python,
        "distributions": sources,
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "bytes": dict(sorted(writer.sizes.items())),
        "total_bytes": sum(writer.sizes.values()),
    }
    if cfg.archive:
        manifest["archive"] = str(out) + ".tar.xz"
    writer.write("MANIFEST.json", (json.dumps(manifest, indent=1) + "\n").encode())
    if cfg.archive:
        manifest["archive_bytes"] = make_archive(out).stat().st_size
    return manifest


def size_table(manifest: dict) -> str:
    mib = 2**20
    rows = [f"| {top} | {size / mib:.1f} |" for top, size in manifest["bytes"].items()]
    rows.append(f"| **folder total** | **{manifest['total_bytes'] / mib:.1f}** |")
    if "archive_bytes" in manifest:
        rows.append(f"| **{Path(manifest['archive']).name}** | **{manifest['archive_bytes'] / mib:.1f}** |")
    return "\n".join(["| part | MiB |", "|---|---|", *rows])

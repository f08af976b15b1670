"""Pack an offline LIBERO simulation bundle for a GPU node without network (see docs/OFFLINE.md).

    python scripts/pack_sim.py --suites libero_spatial --out outputs/sim_spatial --wheel_cache outputs/sim_cache
    python scripts/pack_sim.py --suites libero_spatial libero_goal --out outputs/sim_sg      # shared files once
    python scripts/pack_sim.py --suites libero_spatial --out /tmp/b --from_installed --gl none --archive false

On the node: `tar xJf sim_spatial.tar.xz && source sim_spatial/activate.sh`, then scripts/eval.py or
scripts/collect_demos.py as usual. A suite is packed only from its traced file list (vla/sim_files/<suite>.txt,
made by scripts/trace_sim_files.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.sim_bundle import SUITES, BundleConfig, MissingFileListError, pack, size_table  # noqa: E402


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return text.lower() in ("true", "1")


def parse_args(argv: list[str] | None = None) -> BundleConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", required=True, help=f"LIBERO suites, of {', '.join(SUITES)}")
    parser.add_argument("--out", type=Path, required=True, help="new bundle folder (<out>.tar.xz beside it)")
    parser.add_argument("--python_version", default=None, help="the node's Python, default 3.12")
    parser.add_argument("--wheel_cache", type=Path, default=None, help="keep and reuse downloads here")
    parser.add_argument("--from_installed", action="store_true", help="copy packages from this environment")
    parser.add_argument("--gl", choices=("apt", "none"), default="apt", help="carry Debian's GL loader libraries")
    parser.add_argument(
        "--archive", type=_bool, default=True, help="also write <out>.tar.xz (PNGs stored for xz: bigger folder)"
    )
    parser.add_argument("--optimize_png", type=_bool, default=True, help="re-encode PNGs losslessly")
    parser.add_argument("--assets_dir", type=Path, default=None, help="LIBERO assets (default $VLA_LIBERO_ASSETS)")
    args = parser.parse_args(argv)
    return BundleConfig(**vars(args))


def main(cfg: BundleConfig) -> dict:
    try:
        manifest = pack(cfg)
    except MissingFileListError as err:
        sys.exit(f"pack_sim: {err}")
    print(size_table(manifest))
    print(f"on the node: source {cfg.out}/activate.sh")
    return manifest


if __name__ == "__main__":
    main(parse_args())

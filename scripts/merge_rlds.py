"""Merge RLDS datasets of the same layout (e.g. demonstration runs collected with different seeds) into one dataset
`<out>/<dataset_name>/1.0.0/`, episodes in input order (tfds then hash-shuffles them on disk, as the official data).

    python scripts/merge_rlds.py --inputs data/spatial_s0 data/spatial_s1 --out data/spatial
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from vla.rlds import RLDS_VERSION, check_rlds_dir, read_rlds_episodes, write_rlds_dataset
from vla.runtime import configure_logging


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True, help="data roots holding <dataset_name>/1.0.0/")
    parser.add_argument("--out", required=True, help="data root of the merged dataset")
    parser.add_argument("--dataset_name", default="libero_spatial_no_noops")
    args = parser.parse_args(argv)
    sources = [check_rlds_dir(Path(root) / args.dataset_name / RLDS_VERSION) for root in args.inputs]  # fail first
    episodes = itertools.chain.from_iterable(read_rlds_episodes(source) for source in sources)
    target = write_rlds_dataset(episodes, Path(args.out), args.dataset_name)
    print(f"merged {len(sources)} datasets into {target}")
    return target


if __name__ == "__main__":
    configure_logging()
    main()

"""Merge evaluations that split one protocol between them (different tasks on different nodes, calls or cluster
jobs) into one evaluation folder, and print its table (vla/eval_merge.py):

    python scripts/eval.py --checkpoint CK --tasks "[4,3]" --out_dir runs/eval/a
    python scripts/eval.py --checkpoint CK --tasks "[0,1,2,5,6,7,8,9]" --out_dir runs/eval/b
    python scripts/merge_evals.py --inputs runs/eval/a runs/eval/b --out runs/eval/full

The merged folder reads as one run: `eval.py --out_dir runs/eval/full --report_only true` prints it, and `--resume
true` (with the inputs' flags) runs the episodes none of them ran.
"""

from __future__ import annotations

import argparse
from typing import Any

from vla.eval_merge import merge_evaluations
from vla.reporting import format_table
from vla.runtime import configure_logging


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True, help="eval.py --out_dir folders of the same policy")
    parser.add_argument("--out", required=True, help="folder of the merged evaluation (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing --out folder")
    args = parser.parse_args(argv)
    summary = merge_evaluations(args.inputs, args.out, overwrite=args.overwrite)
    print(format_table(summary))
    print(f"merged {len(args.inputs)} evaluations into {args.out}")
    return summary


if __name__ == "__main__":
    configure_logging()
    main()

"""`python scripts/X.py --help` exits 0 and prints usage for every script (each in its own process, as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("*.py"))
# draccus feeds each field's comment to argparse, which %-formats it: a bare "%" in vla/rlds.py's RLDSConfig docs
# crashes finetune.py --help (being fixed on another branch; strict=False so the fix lands without touching this).
KNOWN_BROKEN = {"finetune.py": "a '%' in an RLDSConfig field comment breaks argparse's help formatting"}


def _help(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_every_script_is_covered():
    assert {"eval.py", "finetune.py", "serve.py", "bench_serve.py", "merge_lora.py"} <= set(SCRIPTS)


@pytest.mark.parametrize(
    "script",
    [pytest.param(s, marks=pytest.mark.xfail(reason=KNOWN_BROKEN[s], strict=False)) if s in KNOWN_BROKEN else s
     for s in SCRIPTS],
)  # fmt: skip
def test_help_works(script):
    result = _help(script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower(), result.stdout[-2000:]

"""`python scripts/X.py --help` exits 0 and prints usage for every script (each in its own process, as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("*.py"))


def _help(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_every_script_is_covered():
    assert {"eval.py", "finetune.py", "serve.py", "bench_serve.py", "merge_lora.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_works(script):
    result = _help(script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower(), result.stdout[-2000:]


def test_eval_help_names_the_official_flags():
    out = _help("eval.py").stdout
    for flag in ("--pretrained_checkpoint", "--task_suite_name", "--load_in_8bit", "--load_in_4bit", "--use_wandb",
                 "--server_url", "--model_family", "--local_log_dir", "--run_id_note"):  # fmt: skip
        assert flag in out, flag

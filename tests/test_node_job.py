"""scripts/node_job.sh: a detached job outlives the command that started it, a running job is not started twice, and
`wait` reports its exit code and brings back its log and the named paths."""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _job(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "JOBS": str(tmp_path / "jobs"), "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(REPO / "scripts" / "node_job.sh"), *args], env=env, capture_output=True,
                           text=True, timeout=timeout)  # fmt: skip


def test_a_job_outlives_its_call_and_wait_brings_back_its_files(tmp_path):
    (tmp_path / "out").mkdir()
    flag, result = tmp_path / "go", tmp_path / "result.txt"
    script = f"while [ ! -f {flag} ]; do sleep 0.2; done; echo made > {result}; echo finished; exit 3"
    started = _job(tmp_path, "start", "j", "bash", "-c", script)
    assert started.returncode == 0, started.stderr
    # the starting command has returned; the job still runs and a second start is refused
    assert _job(tmp_path, "status", "j").stdout.strip() == "running"
    again = _job(tmp_path, "start", "j", "true")
    assert again.returncode == 1 and "still running" in again.stderr
    waited = _job(tmp_path, "wait", "j", "1", str(result))
    assert "job j: running" in waited.stdout

    flag.touch()
    waited = _job(tmp_path, "wait", "j", "30", str(result), str(tmp_path / "missing"))
    assert waited.returncode == 0, waited.stderr
    assert "job j: exit code 3" in waited.stdout and "finished" in waited.stdout
    assert _job(tmp_path, "status", "j").stdout.strip() == "exit code 3"
    with tarfile.open(tmp_path / "out" / "j.tgz") as tar:
        names = tar.getnames()
        assert any(n.endswith("jobs/j.log") for n in names) and any(n.endswith("result.txt") for n in names)
        assert not any(n.endswith("missing") for n in names)

    # an ended job starts again, appending to its log
    assert _job(tmp_path, "start", "j", "true").returncode == 0
    deadline = time.monotonic() + 30
    while _job(tmp_path, "status", "j").stdout.strip() == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _job(tmp_path, "status", "j").stdout.strip() == "exit code 0"
    assert (tmp_path / "jobs" / "j.log").read_text().count("== ") == 4  # two starts, two exits


def test_wait_on_a_job_never_started_and_bad_usage_fail_clearly(tmp_path):
    never = _job(tmp_path, "wait", "nope", "1")
    assert never.returncode == 1 and "never started" in never.stderr
    bad = _job(tmp_path, "launch", "x")
    assert bad.returncode == 2 and "node_job.sh start NAME CMD" in bad.stderr


def test_a_large_bring_back_comes_in_parts_that_rejoin(tmp_path):
    (tmp_path / "out").mkdir()
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(20_000))  # incompressible: the archive is larger than one part
    assert _job(tmp_path, "start", "big", "true").returncode == 0
    env = {**os.environ, "JOBS": str(tmp_path / "jobs"), "OUT": str(tmp_path / "out"), "PART_BYTES": "8192"}
    waited = subprocess.run(["bash", str(REPO / "scripts" / "node_job.sh"), "wait", "big", "30", str(blob)], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert waited.returncode == 0, waited.stderr
    parts = sorted((tmp_path / "out").glob("big.tgz.part*"))
    assert len(parts) == 3 and all(p.stat().st_size <= 8192 for p in parts), parts
    assert not (tmp_path / "out" / "big.tgz").exists()
    joined = tmp_path / "joined.tgz"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("blob.bin"))
        assert tar.extractfile(member).read() == blob.read_bytes()


def test_a_bring_back_over_its_limit_takes_paths_in_order_and_names_the_rest(tmp_path):
    (tmp_path / "out").mkdir()
    first, second, third = (tmp_path / f"{n}.bin" for n in ("first", "second", "third"))
    first.write_bytes(os.urandom(3_000))
    second.write_bytes(os.urandom(9_000))  # would pass the limit: left for a later call
    third.write_bytes(os.urandom(1_000))  # still fits after it
    assert _job(tmp_path, "start", "lim", "true").returncode == 0
    env = {**os.environ, "JOBS": str(tmp_path / "jobs"), "OUT": str(tmp_path / "out"), "MAX_BYTES": "8000"}
    waited = subprocess.run(["bash", str(REPO / "scripts" / "node_job.sh"), "wait", "lim", "30", str(first),
                             str(second), str(third)], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert waited.returncode == 0, waited.stderr
    assert f"left for a later call: {second} (0 MiB)" in waited.stdout
    with tarfile.open(tmp_path / "out" / "lim.tgz") as tar:
        names = tar.getnames()
    assert any(n.endswith("jobs/lim.log") for n in names)
    assert any(n.endswith("first.bin") for n in names) and any(n.endswith("third.bin") for n in names)
    assert not any(n.endswith("second.bin") for n in names)

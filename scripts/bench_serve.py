"""Load test of the policy server: N concurrent clients post 224² images to `/act` for T seconds each round; prints
actions/s, p50/p99 latency, errors and the server's mean batch size per N.

    python scripts/bench_serve.py --url http://127.0.0.1:8000 --clients 1 8 32 --seconds 20
    python scripts/bench_serve.py --checkpoint runs/x/merged --device cuda --max_batch 16 --clients 1 8 32

With `--checkpoint` it starts scripts/serve.py itself on 127.0.0.1 (a free port) and stops it at the end. Send
traffic only to servers on this machine or ones you run.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla.remote_policy import act_payload, decode_action, wait_for_server

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


@dataclass
class BenchConfig:
    url: str | None = None  # a running server (http://HOST:PORT); or start one with `checkpoint`
    checkpoint: str | None = None  # start scripts/serve.py with this checkpoint (directory or hub id)
    clients: list[int] = field(default_factory=lambda: [1, 8, 32])  # concurrent clients per round
    seconds: float = 20.0  # length of each round
    unnorm_key: str | None = None  # sent with every request (None: the server's default)
    serve_args: list[str] = field(default_factory=list)  # extra flags for the started server (--device cuda ...)


def round_stats(url: str, clients: int, seconds: float, unnorm_key: str | None) -> dict[str, float]:
    """`clients` threads, each posting back to back for `seconds` (one distinct image per client)."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        image = np.random.default_rng(index).integers(0, 256, (224, 224, 3), dtype=np.uint8)
        body = act_payload(image, INSTRUCTION, unnorm_key)
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                start = time.monotonic()
                try:
                    decode_action(http.post(f"{url}/act", content=body, headers={"content-type": "application/json"}))
                    with lock:
                        latencies.append(time.monotonic() - start)
                except Exception:  # noqa: BLE001 - counted, the load goes on
                    with lock:
                        errors[0] += 1

    before = httpx.get(f"{url}/info").json()
    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    after = httpx.get(f"{url}/info").json()
    batches = max(1, after["batches_run"] - before["batches_run"])
    ms = np.array(latencies or [np.nan]) * 1000
    return {"clients": clients, "actions/s": len(latencies) / elapsed, "p50 ms": float(np.percentile(ms, 50)),
            "p99 ms": float(np.percentile(ms, 99)), "errors": errors[0],
            "mean batch": (after["requests_served"] - before["requests_served"]) / batches}  # fmt: skip


def start_server(cfg: BenchConfig) -> tuple[str, subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = Path(__file__).with_name("serve.py")
    cmd = [sys.executable, str(serve), "--checkpoint", cfg.checkpoint, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(cmd + cfg.serve_args)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, timeout_s=900, process=process)
    except Exception:
        process.terminate()
        raise
    return url, process


def main(cfg: BenchConfig) -> list[dict[str, float]]:
    if (cfg.url is None) == (cfg.checkpoint is None) or min(cfg.clients) < 1 or not cfg.seconds > 0:
        raise ValueError("pass --url or --checkpoint (one of them), --clients >= 1 and --seconds > 0")
    url, process = (cfg.url.rstrip("/"), None) if cfg.url else start_server(cfg)
    try:
        info = wait_for_server(url, timeout_s=30)
        print(f"{info['model']} on {info['device']} ({info['dtype']}), max_batch {info['max_batch']}, "
              f"max_wait_ms {info['max_wait_ms']}, fast decoding {info['fast_decoding']}")  # fmt: skip
        rows = [round_stats(url, n, cfg.seconds, cfg.unnorm_key) for n in cfg.clients]
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
    columns = list(rows[0])
    print(" | ".join(f"{c:>10}" for c in columns))
    for row in rows:
        print(" | ".join(f"{row[c]:>10.1f}" if isinstance(row[c], float) else f"{row[c]:>10}" for c in columns))
    return rows


def parse(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server, http://HOST:PORT")
    parser.add_argument("--checkpoint", help="start scripts/serve.py with this checkpoint (dir or hub id)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per round")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per round")
    parser.add_argument("--unnorm_key", help="sent with every request (default: the server's)")
    args, serve_args = parser.parse_known_args(argv)  # the rest goes to the started server (--device cuda ...)
    if serve_args and args.checkpoint is None:
        parser.error(f"unknown arguments {serve_args} (server flags apply only with --checkpoint)")
    return BenchConfig(args.url, args.checkpoint, args.clients, args.seconds, args.unnorm_key, serve_args)


if __name__ == "__main__":
    main(parse())

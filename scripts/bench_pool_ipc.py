"""What one observation costs the host to receive from a simulator worker, by what crosses the channel: the raw
256² render (the host prepares the image), the 224² model image alone (`vla.libero_io.WorkerImages` without video
frames), the model image and the uncropped video frame, or a demo collection's two raw renders (agentview and
wrist); and by the channel: `multiprocessing`'s duplex Pipe (a socket pair, ~208 KB of send buffer) or
`vla.worker_pipes.channel_pair` (two pipes, the worker's of 1 MiB), which `vla.env_pool` uses. Spawned workers answer
like `vla.env_pool`'s (a few ms of "physics" per step) while the host acts on each answer, so a message is read
while its sender may still be writing. Prints the host's seconds inside `recv` per message and the ratios.

    python scripts/bench_pool_ipc.py                       # 2 workers, 200 messages each per payload
    python scripts/bench_pool_ipc.py --workers 16 --step_ms 45
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import time
from multiprocessing.connection import wait

import numpy as np

from vla.worker_pipes import channel_pair

# payload name -> the uint8 images of one observation
PAYLOADS = {
    "raw render 256²": [(256, 256, 3)],
    "model image 224²": [(224, 224, 3)],
    "model image + video frame": [(224, 224, 3), (224, 224, 3)],
    "collection: two raw renders 256²": [(256, 256, 3), (256, 256, 3)],
}
CHANNELS = ("socket pair", "pipes")


def _worker(conn, shapes: list[tuple[int, ...]], step_s: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    obs = {f"image_{i}": rng.integers(0, 256, shape, dtype=np.uint8) for i, shape in enumerate(shapes)}
    obs["robot0_eef_pos"] = np.zeros(3)
    while conn.recv() is not None:
        time.sleep(step_s)
        conn.send(dict(obs))


def run(shapes: list[tuple[int, ...]], channel: str, args: argparse.Namespace) -> float:
    """Mean seconds the host spends in `recv` per message."""
    ctx = mp.get_context("spawn")
    conns, procs = [], []
    for i in range(args.workers):
        parent, child = ctx.Pipe() if channel == "socket pair" else channel_pair(ctx)
        proc = ctx.Process(target=_worker, args=(child, shapes, args.step_ms / 1e3, i), daemon=True)
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    for conn in conns:
        conn.send("step")
    received, recv_s = 0, 0.0
    while received < args.messages * args.workers:
        for conn in wait(conns):
            started = time.perf_counter()
            conn.recv()
            recv_s += time.perf_counter() - started
            received += 1
            time.sleep(args.policy_ms / 1e3)
            conn.send("step")
    for conn, proc in zip(conns, procs, strict=True):
        conn.recv()  # the answer still in flight: a sender blocked on a full buffer would never read "stop"
        conn.send(None)
        proc.join()
    return recv_s / received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="simulated simulator processes")
    parser.add_argument("--messages", type=int, default=200, help="messages per worker and payload")
    parser.add_argument("--step_ms", type=float, default=20.0, help="a worker's time per step before it answers")
    parser.add_argument("--policy_ms", type=float, default=2.0, help="the host's time per answer before the next step")
    args = parser.parse_args()
    a, b = socket.socketpair()
    buffer_kb = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) / 1024
    a.close(), b.close()
    print(f"{args.workers} workers, {args.messages} messages each; socket send buffer {buffer_kb:.0f} KB\n")
    rows = {(name, channel): run(shapes, channel, args) for name, shapes in PAYLOADS.items() for channel in CHANNELS}
    base = rows["model image 224²", CHANNELS[0]]
    print("| payload | KB | host ms in recv a message: socket pair / pipes | socket pair / pipes | "
          "ratio to the model image alone, socket pair |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, shapes in PAYLOADS.items():
        kb, sock, pipe = sum(int(np.prod(s)) for s in shapes) / 1024, rows[name, "socket pair"], rows[name, "pipes"]
        print(f"| {name} | {kb:.0f} | {sock * 1e3:.3f} / {pipe * 1e3:.3f} | {sock / pipe:.2f} | {sock / base:.2f} |")


if __name__ == "__main__":
    main()

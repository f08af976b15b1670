"""What one observation costs the host to receive from a simulator worker, by what crosses the pipe: the raw 256²
render (the host prepares the image), the 224² model image alone (`vla.libero_io.WorkerImages` without video
frames), or the model image and the uncropped video frame. Spawned workers answer like `vla.env_pool`'s (a
`multiprocessing` pipe, a few ms of "physics" per step) while the host acts on each answer, so a message is read
while its sender may still be writing. Prints the host's seconds inside `recv` per message and the ratio to the
model image alone.

    python scripts/bench_pool_ipc.py                       # 2 workers, 200 messages each per payload
    python scripts/bench_pool_ipc.py --workers 16 --step_ms 45
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import time
from multiprocessing.connection import Connection, wait

import numpy as np

# payload name -> the uint8 images of one observation
PAYLOADS = {
    "raw render 256²": [(256, 256, 3)],
    "model image 224²": [(224, 224, 3)],
    "model image + video frame": [(224, 224, 3), (224, 224, 3)],
}


def _worker(conn: Connection, shapes: list[tuple[int, ...]], step_s: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    obs = {f"image_{i}": rng.integers(0, 256, shape, dtype=np.uint8) for i, shape in enumerate(shapes)}
    obs["robot0_eef_pos"] = np.zeros(3)
    while conn.recv() is not None:
        time.sleep(step_s)
        conn.send(dict(obs))


def run(shapes: list[tuple[int, ...]], args: argparse.Namespace) -> float:
    """Mean seconds the host spends in `recv` per message."""
    ctx = mp.get_context("spawn")
    conns, procs = [], []
    for i in range(args.workers):
        parent, child = ctx.Pipe()
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
    rows = {name: (sum(int(np.prod(s)) for s in shapes) / 1024, run(shapes, args)) for name, shapes in PAYLOADS.items()}
    base = rows["model image 224²"][1]
    print("| payload | KB | host ms in recv a message | ratio to the model image alone |")
    print("|---|---|---|---|")
    for name, (kb, seconds) in rows.items():
        print(f"| {name} | {kb:.0f} | {seconds * 1e3:.3f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()

"""Duplex channels between the host and a spawned simulator worker with room for a whole observation.

`multiprocessing`'s duplex `Pipe` is a Unix socket pair whose send buffer holds ~208 KB. A larger answer (an RLDS
collection's two 256² renders, ~394 KB; a frame-store collection renders one) is written in parts: the host's
`recv` then waits until the worker is scheduled again to write the rest (`scripts/bench_pool_ipc.py`: 1.5-2.3x the
time in `recv`, docs/PERFORMANCE.md). `channel_pair` gives two one-way pipes instead, the worker's grown to
`PIPE_BYTES` (Linux `F_SETPIPE_SZ`, allowed up to /proc/sys/fs/pipe-max-size, 1 MiB by default), so a worker writes
its whole answer at once and goes on; where the kernel refuses, the socket pair as before.

Whether that speeds a whole run depends on the machine: on the 2-core CPU machine a collection's steps/s did not
change (its workers are the bottleneck) while the host's writes of the next action took longer (the worker, no
longer blocked in its own send, is woken by them). So `vla.env_pool.EnvPool` uses it only when asked
(`answer_pipe_bytes`), and `scripts/bench_sim.py --channels socket,pipes` measures both on a node.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import Connection
from typing import Any

try:
    from fcntl import F_GETPIPE_SZ, F_SETPIPE_SZ, fcntl
except ImportError:  # not Linux
    F_GETPIPE_SZ = F_SETPIPE_SZ = fcntl = None

PIPE_BYTES = 1 << 20


class PipeChannel:
    """A duplex channel made of two one-way pipes, with `Connection`'s `send`, `recv`, `poll` and `close`;
    `fileno` is the reading end's, for `multiprocessing.connection.wait`. Passed to a spawned process as its
    `Connection`s are."""

    def __init__(self, reader: Connection, writer: Connection) -> None:
        self.reader, self.writer = reader, writer

    def send(self, obj: Any) -> None:
        self.writer.send(obj)

    def recv(self) -> Any:
        return self.reader.recv()

    def poll(self, timeout: float | None = 0.0) -> bool:
        return self.reader.poll(timeout)

    def fileno(self) -> int:
        return self.reader.fileno()

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def pipe_bytes(conn: Connection) -> int | None:
    """The kernel buffer of a pipe `Connection` in bytes (None where it cannot be read)."""
    if fcntl is None:
        return None
    try:
        return fcntl(conn.fileno(), F_GETPIPE_SZ)
    except OSError:
        return None


def _grow(conn: Connection, size: int) -> bool:
    try:
        return fcntl is not None and fcntl(conn.fileno(), F_SETPIPE_SZ, size) >= size
    except OSError:  # EPERM above pipe-max-size, EBUSY, ...
        return False


def channel_pair(ctx: Any = None, buffer_bytes: int = PIPE_BYTES) -> tuple[Any, Any]:
    """(host end, worker end) of one worker's channel: two pipes, the worker-to-host one of `buffer_bytes`, where
    the kernel grows it that far; else `ctx.Pipe()`, a socket pair. `ctx`: a multiprocessing context (default
    spawn)."""
    ctx = ctx or mp.get_context("spawn")
    worker_reads, host_writes = ctx.Pipe(duplex=False)
    host_reads, worker_writes = ctx.Pipe(duplex=False)
    if _grow(worker_writes, buffer_bytes):
        return PipeChannel(host_reads, host_writes), PipeChannel(worker_reads, worker_writes)
    for conn in (worker_reads, host_writes, host_reads, worker_writes):
        conn.close()
    return ctx.Pipe()

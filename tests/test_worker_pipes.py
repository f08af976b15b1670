"""vla.worker_pipes: a worker writes a whole observation without waiting for the host; spawned workers talk over it
as over a multiprocessing Pipe; where the kernel refuses the bigger buffer, a Pipe it is."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import threading
from multiprocessing.connection import wait

import numpy as np
import pytest

from vla import worker_pipes
from vla.worker_pipes import PIPE_BYTES, PipeChannel, channel_pair, pipe_bytes

OBSERVATION = {"agentview_image": np.ones((256, 256, 3), np.uint8), "wrist_image": np.ones((256, 256, 3), np.uint8)}


def _sends_without_a_reader(conn, message, timeout: float = 10.0) -> bool:
    """Whether `conn.send(message)` returns while nobody reads the other end."""
    thread = threading.Thread(target=conn.send, args=(message,), daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def _echo(conn) -> None:
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the host closed its end
            return
        conn.send({key: value.sum() for key, value in message.items()})


def test_a_worker_writes_a_two_camera_observation_at_once():
    host, worker = channel_pair()
    assert isinstance(worker, PipeChannel) and pipe_bytes(worker.writer) >= PIPE_BYTES
    assert _sends_without_a_reader(worker, OBSERVATION)  # ~394 KB: more than a socket pair's send buffer
    received = host.recv()
    assert received.keys() == OBSERVATION.keys() and all(v.sum() == 256 * 256 * 3 for v in received.values())
    host.close(), worker.close()


def test_the_socket_pair_it_replaces_makes_the_worker_wait_for_the_host():
    """Why: the same observation over multiprocessing's duplex Pipe does not fit its send buffer."""
    host, worker = mp.get_context("spawn").Pipe()
    with socket.socket(fileno=os.dup(worker.fileno())) as sock:
        buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    if buffer >= sum(v.nbytes for v in OBSERVATION.values()):
        pytest.skip(f"this kernel's socket send buffer ({buffer} bytes) holds the observation")
    assert not _sends_without_a_reader(worker, OBSERVATION, timeout=2.0)
    assert host.recv().keys() == OBSERVATION.keys()  # the reader frees the blocked send
    host.close(), worker.close()


def test_spawned_workers_answer_over_it_and_end_when_the_host_closes():
    ctx = mp.get_context("spawn")
    pairs = [channel_pair(ctx) for _ in range(2)]
    procs = [ctx.Process(target=_echo, args=(child,), daemon=True) for _, child in pairs]
    for proc, (_, child) in zip(procs, pairs, strict=True):
        proc.start()
        child.close()
    hosts = [host for host, _ in pairs]
    for host in hosts:
        host.send(OBSERVATION)
    answers = {}
    while len(answers) < len(hosts):
        for host in wait(hosts, timeout=60):
            answers[hosts.index(host)] = host.recv()
    assert all(a["wrist_image"] == 256 * 256 * 3 for a in answers.values())
    for host, proc in zip(hosts, procs, strict=True):
        host.close()
        proc.join(timeout=30)
        assert proc.exitcode == 0


def test_where_the_kernel_refuses_the_buffer_it_is_a_multiprocessing_pipe(monkeypatch):
    def refuse(fd, cmd, arg=0):
        raise PermissionError("pipe-max-size")

    monkeypatch.setattr(worker_pipes, "fcntl", refuse)
    host, worker = channel_pair()
    assert not isinstance(host, PipeChannel)
    worker.send("ready")
    assert host.recv() == "ready"
    host.close(), worker.close()


def test_only_the_workers_answers_get_the_grown_buffer():
    host, worker = channel_pair(buffer_bytes=PIPE_BYTES // 2)
    assert pipe_bytes(worker.writer) == PIPE_BYTES // 2 and pipe_bytes(host.writer) < PIPE_BYTES // 2
    host.close(), worker.close()

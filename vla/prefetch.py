"""Batches made ahead by a background thread while the model steps (`speed.prefetch_batches`).

The data path of a frame source on the GPU (gather, augment, normalize, tokenize, collate) is host-bound Python, and
the training step mostly waits on the host too: made one after the other, their times add up
(`scripts/bench_small_training.py`, rows `train` and `train, prefetched`). `Prefetched` overlaps them. The batches
and their order are the same, and each batch travels with the stream's position right after it (`snapshot`), so
a checkpoint saves the position of the last batch *used*, not of the last one made: a resume continues exactly.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Prefetched:
    """`next(self)` is `next(batches)`, made by a thread at most `depth` batches ahead. `snapshot()` (e.g. the
    dataset's `state_dict`) is called in that thread right after each batch; `self.snapshot` is the value that came
    with the last batch handed out (before any: its value at construction). An error of `batches` reaches the
    caller's next `next`, after the batches made before it. Use as a context manager: leaving it stops the thread."""

    def __init__(self, batches: Iterator, depth: int = 2, snapshot: Callable[[], Any] | None = None) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._batches, self._take = batches, snapshot or (lambda: None)
        self.snapshot = self._take()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="prefetch", daemon=True)

    def _fill(self) -> None:
        failed = False
        while not (self._stop.is_set() or failed):
            try:
                item = (next(self._batches), self._take())
            except BaseException as err:  # StopIteration included: handed on, then the thread ends
                item, failed = err, True
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def __enter__(self) -> Prefetched:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def __iter__(self) -> Prefetched:
        return self

    def __next__(self):
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)  # every later `next` raises it too
            raise item
        batch, self.snapshot = item
        return batch

"""vla.prefetch: batches made ahead keep their order, carry the stream's position, and hand on errors."""

import time

import pytest

from vla.prefetch import Prefetched


class _Counter:
    """A stream of 0, 1, 2, ... whose `position` counts the items made (as a dataset's `frames_consumed`)."""

    def __init__(self, stop: int | None = None, fail_at: int | None = None):
        self.position, self.stop, self.fail_at = 0, stop, fail_at

    def __iter__(self):
        return self

    def __next__(self):
        if self.position == self.fail_at:
            raise OSError("disk gone")
        if self.position == self.stop:
            raise StopIteration
        self.position += 1
        return self.position - 1


def test_batches_come_in_order_with_the_position_after_each_not_after_the_last_made():
    stream = _Counter()
    with Prefetched(stream, depth=3, snapshot=lambda: stream.position) as ahead:
        assert ahead.snapshot == 0  # before any batch: the position it started at
        assert next(ahead) == 0
        time.sleep(0.2)  # the thread runs ahead: 3 queued + 1 in hand
        assert stream.position > 1 and ahead.snapshot == 1
        assert [next(ahead) for _ in range(5)] == [1, 2, 3, 4, 5] and ahead.snapshot == 6


def test_an_error_reaches_the_caller_after_the_batches_made_before_it_and_stays():
    with Prefetched(_Counter(fail_at=2)) as ahead:
        assert [next(ahead), next(ahead)] == [0, 1]
        for _ in range(2):
            with pytest.raises(OSError, match="disk gone"):
                next(ahead)
    with Prefetched(_Counter(stop=1)) as ahead:
        assert list(ahead) == [0]  # the end of the stream ends the iteration


def test_leaving_the_context_stops_a_thread_waiting_on_a_full_queue():
    with Prefetched(_Counter(), depth=1) as ahead:
        next(ahead)
        time.sleep(0.2)
    assert not ahead._thread.is_alive()
    with pytest.raises(ValueError, match="depth"):
        Prefetched(_Counter(), depth=0)

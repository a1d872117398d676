"""How many requests the `openai` describer keeps in flight: as many as `--concurrency` until the server shows
it is saturated, then fewer, growing back while answers come in time (additive increase, multiplicative decrease).

A saturated server shows itself by 429s and by answers slower than `--lmm-timeout` while it keeps answering
others (a queue: one-at-a-time servers such as `transformers serve`). One decrease per window: a signal counts
only from a request sent after the last decrease, so one crowded wave halves the limit once, not to 1.
"""

from __future__ import annotations

import threading
import time


class AdaptiveLimit:
    """A gate for requests; no limit (the runner's thread count) until the first overload."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.limit: int | None = None  # None: every thread may send
        self.in_flight = 0
        self.peak = 0  # most requests ever in flight: the ceiling the limit grows back to
        self.lowest: int | None = None  # the lowest limit set (for reports and tests)
        self._credit = 0.0
        self._last_decrease = float("-inf")

    def acquire(self, stop: threading.Event) -> float | None:
        """Wait for a free slot; the send time (the ticket for `overloaded`), or None when the run stops first."""
        with self._condition:
            while self.limit is not None and self.in_flight >= self.limit:
                if stop.is_set():
                    return None
                self._condition.wait(0.1)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return time.monotonic()

    def release(self) -> None:
        with self._condition:
            self.in_flight -= 1
            self._condition.notify()

    def succeeded(self) -> None:
        """An answer in time: one more slot per `limit` answers, until the ceiling lifts the limit."""
        with self._condition:
            if self.limit is None:
                return
            self._credit += 1.0 / self.limit
            if self._credit >= 1.0:
                self._credit = 0.0
                self.limit += 1
                self._condition.notify()
                if self.limit >= self.peak:
                    self.limit = None
                    self._condition.notify_all()

    def overloaded(self, sent_at: float) -> None:
        """A 429 or an answer later than the timeout: halve the requests in flight (once per window)."""
        with self._condition:
            if sent_at <= self._last_decrease:
                return
            self._last_decrease = time.monotonic()
            current = self.limit if self.limit is not None else max(self.in_flight, 1)
            self.limit = max(1, current // 2)
            self.lowest = self.limit if self.lowest is None else min(self.lowest, self.limit)
            self._credit = 0.0

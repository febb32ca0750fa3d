"""The server's one background-thread loop: sleep on a condition until there is work, a
poke, a deadline, or a stop; then do the work without the condition held.

The model engine and the file loader wake for queued jobs (:meth:`Worker.has_work`); the
playback scheduler and the live listener wake at their next deadline
(:meth:`Worker.wait_seconds`) or when :meth:`Worker.poke`-d after their plans changed.
"""

from __future__ import annotations

import logging
import threading

_LOGGER = logging.getLogger(__name__)


class Worker:
    """Subclasses say whether work is waiting (:meth:`has_work`) and how long they may
    sleep otherwise (:meth:`wait_seconds`), both called with ``cond`` held, and do the
    work (:meth:`run_pending`, called without it). An exception in the work is logged and
    the thread goes on: a bug must not leave the server deaf."""

    thread_name = "mvae-worker"

    def __init__(self, cond: threading.Condition | None = None) -> None:
        self.cond = cond or threading.Condition()
        self._stopping = False
        self._poked = False
        self._thread: threading.Thread | None = None

    def has_work(self) -> bool:
        """Whether :meth:`run_pending` has something to do now (``cond`` held)."""
        return False

    def wait_seconds(self) -> float | None:
        """How long to sleep when there is no work: until a deadline, or None to sleep
        until notified or poked (``cond`` held)."""
        return None

    def run_pending(self) -> int:
        raise NotImplementedError

    def poke(self) -> None:
        """Run :meth:`run_pending` soon (plans changed). Call with ``cond`` held."""
        self._poked = True
        self.cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (after the work it is doing)."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _sleep(self) -> None:
        """Wait (``cond`` held) until stopped, poked, given work or a deadline comes."""
        while not (self._stopping or self._poked or self.has_work()):
            timeout = self.wait_seconds()
            if timeout is not None and timeout <= 0:
                return
            if not self.cond.wait(timeout) and timeout is not None:
                return  # the deadline came

    def _loop(self) -> None:
        while True:
            with self.cond:
                self._sleep()
                if self._stopping:
                    return
                self._poked = False
            try:
                self.run_pending()
            except Exception:
                _LOGGER.exception("%s failed; going on", self.thread_name)

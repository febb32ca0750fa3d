"""A background thread that sleeps on a condition until there is work or it is stopped."""

from __future__ import annotations

import logging
import threading

_LOGGER = logging.getLogger(__name__)


class Worker:
    """Subclasses say when there is work (:meth:`has_work`, called with ``cond`` held) and
    do it (:meth:`run_pending`, called without it). An exception in the work is logged and
    the thread goes on: a bug must not leave the server deaf."""

    thread_name = "mvae-worker"

    def __init__(self, cond: threading.Condition | None = None) -> None:
        self.cond = cond or threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def has_work(self) -> bool:
        raise NotImplementedError

    def run_pending(self) -> int:
        raise NotImplementedError

    def wait_timeout(self) -> float | None:
        """Seconds to sleep without news before asking :meth:`has_work` again (called with
        ``cond`` held; None: until notified)."""
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not (self._stopping or self.has_work()):
                    self.cond.wait(self.wait_timeout())
                if self._stopping:
                    return
            try:
                self.run_pending()
            except Exception:
                _LOGGER.exception("%s failed; going on", self.thread_name)

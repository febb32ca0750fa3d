"""``/mvae/encode/file``: melodies read from MIDI or audio files inside ``--allow-dir``.

Reading a file (and above all transcribing audio) is slow next to a decode, so it runs on
a small pool of threads, one waiting file and one read at a time per client (latest wins),
so a slow read holds up only its own client; the melody it reads goes to the engine as an
encode job like a note list would.

A file is opened first and checked after (:func:`melodyvae.limits.open_checked`): never
through a symbolic link, never a FIFO or a device (nothing blocks), a regular file inside
the allowed folder by the path the open landed on, MIDI of at most
:data:`MAX_MIDI_BYTES` and audio of at most :data:`MAX_AUDIO_SECONDS` (from its header,
then read in blocks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from melodyvae.errors import MelodyVAEError
from melodyvae.inference import melody_suffixes, read_melody
from melodyvae.melody import Melody
from melodyvae.server.engine import LatestWins
from melodyvae.server.state import ClientState
from melodyvae.server.worker import Worker

_LOGGER = logging.getLogger(__name__)

MAX_AUDIO_SECONDS = 60.0  # longest audio file transcribed for a client
FILE_THREADS = 4  # files read at once (each client one at a time)


class FileAccessError(MelodyVAEError):
    """A path the server will not read."""


def allowed_path(allow_dir: Path | None, name: str) -> Path:
    """The file ``name`` names inside ``allow_dir``; refuse anything outside it.

    Relative names are taken from ``allow_dir``. This is the early, friendly check (a link
    pointing out is refused here by resolving it); the file itself is checked again once
    opened, where links are not followed at all (:func:`read_melody`).
    """
    if allow_dir is None:
        raise FileAccessError("reading files is off; start the server with --allow-dir DIR")
    if "\x00" in name:
        raise FileAccessError("a path cannot hold a NUL character")
    root = allow_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise FileAccessError(f"{name}: outside the allowed folder {root}")
    suffixes = melody_suffixes()
    if path.suffix.lower() not in suffixes:
        raise FileAccessError(f"{name}: not a MIDI or audio file ({', '.join(suffixes)})")
    if not path.exists():
        raise FileAccessError(f"{name}: no such file in {root}")
    return root / name  # as named: opening it checks again, links not followed


@dataclass
class FileJob:
    client: ClientState
    address: str
    path: Path
    section: int | None = None  # a phrase model's section the melody sets; None: encode


class FileLoader(Worker):
    """A thread that hands files to a pool of readers and their melodies on."""

    def __init__(self, deliver: Callable[[FileJob, Melody], None],
                 fail: Callable[[ClientState, str, str], None], max_clients: int = 64,
                 root: Path | None = None) -> None:
        self.deliver = deliver
        self.fail = fail
        self.root = root
        super().__init__()
        self.jobs: LatestWins[FileJob] = LatestWins(max_clients)
        self.reading: set[object] = set()  # clients with a read in flight
        self.pool = ThreadPoolExecutor(FILE_THREADS, thread_name_prefix="mvae-file")

    def submit(self, job: FileJob) -> None:
        with self.cond:
            self.jobs.put(job.client.key, job)
            self.cond.notify()

    def run_pending(self) -> int:
        """Start a read for each waiting file whose client has none in flight."""
        with self.cond:
            jobs = [job for key, job in self.jobs.jobs.items() if key not in self.reading]
            for job in jobs:
                del self.jobs.jobs[job.client.key]
                self.reading.add(job.client.key)
        for job in jobs:
            self.pool.submit(self._read, job)
        return len(jobs)

    def _read(self, job: FileJob) -> None:
        try:
            melody, _ = read_melody(job.path, root=self.root,
                                    max_audio_seconds=MAX_AUDIO_SECONDS)
        except MelodyVAEError as e:
            self.fail(job.client, job.address, str(e))
        except Exception as e:  # a transcriber or MIDI library bug must not end the thread
            _LOGGER.exception("reading %s failed", job.path)
            self.fail(job.client, job.address, f"cannot read {job.path.name}: "
                                               f"{type(e).__name__}: {e}")
        else:
            self.deliver(job, melody)
        finally:
            with self.cond:
                self.reading.discard(job.client.key)
                self.cond.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Start what waits and wait until no read is in flight or waiting (tests drive the
        loader this way instead of its thread); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.run_pending()
            with self.cond:
                if not self.reading and not self.jobs.jobs:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)

    def close(self, timeout: float = 5.0) -> None:
        super().close(timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)

    thread_name = "mvae-files"

    def has_work(self) -> bool:
        return any(key not in self.reading for key in self.jobs.jobs)

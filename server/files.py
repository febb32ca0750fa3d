"""``/mvae/encode/file``: melodies read from MIDI or audio files inside ``--allow-dir``.

Reading a file (and above all transcribing audio) is slow next to a decode, so it runs on
its own thread, one waiting file per client (latest wins); the melody it reads goes to the
engine as an encode job like a note list would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from melodyvae.errors import MelodyVAEError
from melodyvae.inference import melody_suffixes, read_melody
from melodyvae.melody import Melody
from melodyvae.server.engine import LatestWins
from melodyvae.server.state import ClientState
from melodyvae.server.worker import Worker

_LOGGER = logging.getLogger(__name__)

class FileAccessError(MelodyVAEError):
    """A path the server will not read."""


def allowed_path(allow_dir: Path | None, name: str) -> Path:
    """The file ``name`` names inside ``allow_dir``; refuse anything outside it.

    Relative names are taken from ``allow_dir``; symbolic links are resolved before the
    check, so a link pointing out of the folder is refused too.
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
    if not path.is_file():
        raise FileAccessError(f"{name}: no such file in {root}")
    return path


@dataclass
class FileJob:
    client: ClientState
    address: str
    path: Path


class FileLoader(Worker):
    """A thread that reads files and hands their melodies on."""

    def __init__(self, deliver: Callable[[FileJob, Melody], None],
                 fail: Callable[[ClientState, str, str], None], max_clients: int = 64) -> None:
        self.deliver = deliver
        self.fail = fail
        super().__init__()
        self.jobs: LatestWins[FileJob] = LatestWins(max_clients)

    def submit(self, job: FileJob) -> None:
        with self.cond:
            self.jobs.put(job.client.key, job)
            self.cond.notify()

    def run_pending(self) -> int:
        with self.cond:
            jobs = self.jobs.take()
        for job in jobs:
            try:
                melody, _ = read_melody(job.path)
            except MelodyVAEError as e:
                self.fail(job.client, job.address, str(e))
                continue
            except Exception as e:  # a transcriber or MIDI library bug must not end the thread
                _LOGGER.exception("reading %s failed", job.path)
                self.fail(job.client, job.address, f"cannot read {job.path.name}: "
                                                   f"{type(e).__name__}: {e}")
                continue
            self.deliver(job, melody)
        return len(jobs)

    thread_name = "mvae-files"

    def has_work(self) -> bool:
        return bool(self.jobs.jobs)

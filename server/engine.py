"""The model side of the server: latest-wins request slots and a rolling decode batch.

The network thread never runs the model. It puts a job in its client's slot and wakes the
worker; a newer job replaces an older one still waiting (a slider flood leaves at most one
pending decode per client; the stale ones are dropped and counted).

On the CPU the worker keeps a rolling batch (:class:`melodyvae.decode.Rolling`): between
two decode steps it takes every waiting job, lets each decode join the batch at its first
step, and takes out the running decode of a client that has asked for something newer —
unless that client has heard nothing for :data:`MAX_UNANSWERED_S` because of such stops:
then that decode finishes next to the newer one, so a flood still hears a few melodies a
second, and the last update of a flood never waits for a whole decode of another request.
Each melody goes to the :class:`Sink` the step it completes. On a GPU, where each step is a
kernel launch, the worker decodes whole batches instead (one per (temperature, seed) group;
greedy decodes of all clients share one), and a running batch stops at its next step once
every client in it has asked for something newer.

Encodes run as one batch, between two steps. Live answers come as *tasks*: model work with
a deadline (see live.py), one waiting per client, run before the encodes and decodes
waiting beside them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, cast

import numpy as np
import torch

from melodyvae.decode import MAX_ROWS, DecodeCancelled, blas_threads, numpy_context
from melodyvae.errors import MelodyVAEError
from melodyvae.inference import vary
from melodyvae.melody import Melody
from melodyvae.server.state import Addr, ClientState
from melodyvae.server.worker import Worker

if TYPE_CHECKING:
    from melodyvae.inference import MelodyVAE
    from melodyvae.phrase_inference import PhraseMelodyVAE

_LOGGER = logging.getLogger(__name__)

# A client whose decodes have been stopped as stale for this long gets its running decode
# finished: a slider dragged fast and long still updates a playing loop twice a second (it
# changes at bar lines, a second or more apart).
MAX_UNANSWERED_S = 0.5
# While new clients crowd out others (a flood of new source ports), their decodes wait apart
# and run only when no settled client's decode is running or waiting, at most
# MAX_NEWCOMERS at once and NEWCOMER_RATE a second; the rest go when their client is
# forgotten. The clients already playing keep their latency, and a newcomer that keeps
# talking settles within half a second (see clients.py) and is served as any other.
MAX_NEWCOMERS = 2
NEWCOMER_RATE = 20.0  # newcomer decodes started per second while the table is crowded


@dataclass
class DecodeJob:
    """Make a melody for ``client``."""

    client: ClientState
    address: str  # the request it answers (for error replies)
    temperature: float  # 0: greedy
    seed: int  # sampling seed when temperature > 0
    z: np.ndarray | None = None  # a fixed vector; None: the client's z when decoded
    vary: tuple[float, int] | None = None  # (amount, seed): add amount * N(0, I) to z
    received: float = field(default_factory=time.perf_counter)
    protected: bool = False  # finish it even once the client has asked for something newer
    newcomer: bool = False  # from a new client while new clients crowd the table
    sections: bool = False  # decode the client's section codes (phrase models), not z

    def latent(self) -> np.ndarray:
        """The vector to decode, read when the worker gets to it (after pending encodes)."""
        z = self.client.z if self.z is None else self.z
        if self.vary is not None:
            amount, seed = self.vary
            z = vary(z, amount, seed)
        return z


@dataclass
class EncodeJob:
    """Find the latent vector of ``melody`` and make it ``client``'s."""

    client: ClientState
    address: str
    melody: Melody


class Sink(Protocol):
    """Where the engine's results go (the server core sends them as OSC)."""

    def melody_ready(self, job: DecodeJob, melody: Melody) -> None: ...

    def z_ready(self, job: EncodeJob, z: np.ndarray) -> None: ...

    def failed(self, client: ClientState, address: str, reason: str) -> None: ...


J = TypeVar("J")


class LatestWins(Generic[J]):
    """At most one waiting job per client; a new one replaces the waiting one.

    Not locked itself: the owner holds its condition around every call.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # distinct clients waiting at once (oldest dropped past it)
        self.jobs: OrderedDict[Addr, J] = OrderedDict()
        self.superseded = 0  # jobs replaced before the worker got to them
        self.max_waiting = 0  # the most jobs waiting at once

    def put(self, key: Addr, job: J) -> None:
        if self.jobs.pop(key, None) is not None:
            self.superseded += 1
        self.jobs[key] = job
        while len(self.jobs) > self.capacity:
            self.jobs.popitem(last=False)
            self.superseded += 1
        self.max_waiting = max(self.max_waiting, len(self.jobs))

    def take(self) -> list[J]:
        jobs = list(self.jobs.values())
        self.jobs.clear()
        return jobs


@dataclass
class EngineStats:
    """The engine's counters (a copy of them from :meth:`Engine.snapshot`)."""

    requests: int = 0  # decode requests received
    decoded: int = 0  # melodies made
    batches: int = 0  # decodes started together: rolling-batch joins, or whole batches
    max_batch: int = 0  # the most decodes running together
    encoded: int = 0  # melodies encoded
    cancelled: int = 0  # decodes stopped part-way because every client had a newer request
    superseded: int = 0  # decode requests dropped, still waiting, for a newer one
    max_waiting: int = 0  # the most decode requests waiting at once


class Engine(Worker):
    """Runs the model for all clients, from one worker thread."""

    def __init__(self, vae: MelodyVAE, sink: Sink, state_lock: threading.RLock,
                 max_clients: int = 64) -> None:
        self.vae = vae
        self.sink = sink
        self.state_lock = state_lock  # guards client state read while building z
        super().__init__()
        self.decodes: LatestWins[DecodeJob] = LatestWins(max_clients)
        self.encodes: LatestWins[EncodeJob] = LatestWins(max_clients)
        self.tasks: LatestWins[Callable[[], None]] = LatestWins(max_clients)
        self.stats = EngineStats()
        self.clock: Callable[[], float] = time.monotonic
        # Decodes in NumPy on the CPU join a rolling batch (None on a GPU: whole batches)
        self.rolling = vae.rolling()
        self.running: dict[int, DecodeJob] = {}  # id(job) -> job, in the rolling batch
        self.flying: dict[Addr, list[DecodeJob]] = {}  # per client: at most two running
        self.evicted: list[ClientState] = []  # forgotten clients whose decodes must leave
        self.held: OrderedDict[Addr, DecodeJob] = OrderedDict()  # newcomers' decodes waiting
        self._newcomer_tokens = float(MAX_NEWCOMERS)  # budget of newcomer decodes ...
        self._newcomer_at = time.monotonic()  # ... as of this time

    def snapshot(self) -> EngineStats:
        """The counters at one moment, safe to read from any thread."""
        with self.cond:
            return dataclasses.replace(self.stats, superseded=self.decodes.superseded,
                                       max_waiting=self.decodes.max_waiting)

    # ------------------------------------------------------------ network thread side
    def submit_decode(self, job: DecodeJob) -> None:
        with self.cond:
            self.stats.requests += 1
            key = job.client.key
            if job.newcomer:
                if self.held.pop(key, None) is not None:
                    self.decodes.superseded += 1
                self.held[key] = job
                while len(self.held) > self.decodes.capacity:
                    self.held.popitem(last=False)
                    self.decodes.superseded += 1
            else:
                if self.held.pop(key, None) is not None:
                    self.decodes.superseded += 1
                self.decodes.put(key, job)
            self.cond.notify()

    def submit_encode(self, job: EncodeJob) -> None:
        with self.cond:
            self.encodes.put(job.client.key, job)
            self.cond.notify()

    def submit_task(self, key: Addr, task: Callable[[], None]) -> None:
        """Model work with a deadline (a live answer); it runs before waiting jobs. The
        task reports its own errors; a newer task of the same client replaces it."""
        with self.cond:
            self.tasks.put(key, task)
            self.cond.notify()

    def forget(self, key: Addr, client: ClientState | None = None) -> None:
        """Drop a client's waiting jobs (it was evicted) and, with ``client``, stop its
        running decodes at the next step: nobody is left to hear them."""
        with self.cond:
            self.decodes.jobs.pop(key, None)
            self.encodes.jobs.pop(key, None)
            self.tasks.jobs.pop(key, None)
            self.held.pop(key, None)
            if client is not None:
                self.evicted.append(client)
                self.cond.notify()

    # ------------------------------------------------------------ worker side
    thread_name = "mvae-engine"

    def _waiting(self) -> bool:
        return bool(self.decodes.jobs or self.encodes.jobs or self.tasks.jobs or self.evicted)

    def has_work(self) -> bool:
        return self._waiting() or bool(self.running) or self._newcomers_due() > 0

    def wait_seconds(self) -> float | None:
        """With newcomers held back by their rate alone: when the next may start."""
        if not self.held or self._newcomers_due(budget=False) == 0:
            return None
        return max(0.001, (1.0 - self._newcomer_tokens) / NEWCOMER_RATE)

    def _newcomers_due(self, budget: bool = True) -> int:
        """How many held newcomer decodes may start now (cond held): none while a settled
        client's decode runs or waits; else up to MAX_NEWCOMERS running and, with
        ``budget``, NEWCOMER_RATE a second."""
        if not self.held or self.decodes.jobs or any(not job.newcomer
                                                     for job in self.running.values()):
            return 0
        free = MAX_NEWCOMERS - sum(job.newcomer for job in self.running.values())
        if not budget:
            return max(0, min(free, len(self.held)))
        now = time.monotonic()
        self._newcomer_tokens = min(float(MAX_NEWCOMERS), self._newcomer_tokens
                                    + (now - self._newcomer_at) * NEWCOMER_RATE)
        self._newcomer_at = now
        return max(0, min(free, len(self.held), int(self._newcomer_tokens)))

    def run_pending(self) -> int:
        """Process every waiting job, and every job that arrives meanwhile, until none is
        left; the number processed. (The worker's step; tests call it directly instead of
        starting the thread.)"""
        done = 0
        while not self._stopping:
            done += self._take_and_run()
            if self.running:
                with numpy_context():  # while decodes are running
                    while self.running and not self._stopping:
                        self._step()
                        if self._waiting():
                            done += self._take_and_run()
            with self.cond:
                if not (self._waiting() or self._newcomers_due()):
                    return done
        return done

    def _take_and_run(self) -> int:
        with self.cond:
            tasks = self.tasks.take()
            encodes = self.encodes.take()
            decodes = self.decodes.take()
            evicted, self.evicted = self.evicted, []
            if decodes and self.rolling is not None:  # settled clients first: running
                for job in [j for j in self.running.values() if j.newcomer]:  # newcomers
                    self._leave(job)  # wait again, first in line
                    if job.client.key not in self.held:
                        self.held[job.client.key] = job
                        self.held.move_to_end(job.client.key, last=False)
            for _ in range(0 if decodes else self._newcomers_due()):
                decodes.append(self.held.popitem(last=False)[1])
                self._newcomer_tokens -= 1.0
        if evicted:
            gone = {id(client) for client in evicted}
            decodes = [job for job in decodes if id(job.client) not in gone]
            encodes = [job for job in encodes if id(job.client) not in gone]
            for job in [j for j in self.running.values() if id(j.client) in gone]:
                self._leave(job)
                self.stats.cancelled += 1
        for task in tasks:
            try:
                task()
            except Exception:  # tasks answer their own errors; this is a bug
                _LOGGER.exception("a model task failed")
        if encodes:
            self._encode(encodes)
        coded = [job for job in decodes if job.sections]
        if coded:
            decodes = [job for job in decodes if not job.sections]
            self._decode_sections(coded)
        if decodes and self.rolling is not None:
            self._admit(decodes)
        elif decodes:
            self._decode(decodes)
        return len(tasks) + len(encodes) + len(decodes)

    # ------------------------------------------------------------ rolling batch (CPU)
    def _admit(self, jobs: list[DecodeJob]) -> None:
        """Add the jobs to the rolling batch. A client's running decode leaves it, stale,
        unless the client has heard nothing for MAX_UNANSWERED_S: then the oldest running
        decode of that client finishes, next to the newest."""
        assert self.rolling is not None
        now = self.clock()
        with self.state_lock:
            latents = [job.latent() for job in jobs]
        for job in jobs:
            client = job.client
            flying = self.flying.get(client.key, [])
            starved = (client.unanswered_since is not None
                       and now - client.unanswered_since >= MAX_UNANSWERED_S)
            for old in list(flying):
                if not old.protected and starved and not any(j.protected for j in flying):
                    old.protected = True
                elif not old.protected:
                    self._leave(old)
                    self.stats.cancelled += 1
                    if client.unanswered_since is None:
                        client.unanswered_since = now
        try:
            self.rolling.add([(id(job), z.astype(np.float32), job.temperature,
                               self.vae.generator(job.temperature, job.seed))
                              for job, z in zip(jobs, latents, strict=True)])
        except Exception as e:
            self._fail(jobs, e)
            return
        for job in jobs:
            self.running[id(job)] = job
            self.flying.setdefault(job.client.key, []).append(job)
        self.stats.batches += 1
        self.stats.max_batch = max(self.stats.max_batch, len(self.rolling))

    def _leave(self, job: DecodeJob) -> None:
        assert self.rolling is not None
        self.rolling.drop(id(job))
        del self.running[id(job)]
        flying = self.flying[job.client.key]
        flying.remove(job)
        if not flying:
            del self.flying[job.client.key]

    def _step(self) -> None:
        """One decode step of the rolling batch; each melody that completes goes out."""
        assert self.rolling is not None
        threads = torch.get_num_threads()
        wide = self.rolling.width > MAX_ROWS and threads > 1
        try:  # past MAX_ROWS rows a step's GEMMs are big enough for --threads to pay
            with blas_threads(threads) if wide else contextlib.nullcontext():
                finished = self.rolling.step()
        except Exception as e:  # the batch's state is lost with it: every job fails
            jobs = list(self.running.values())
            self.rolling = self.vae.rolling()
            self.running.clear()
            self.flying.clear()
            self._fail(jobs, e)
            return
        for key, tokens in finished:
            job = self.running[key]
            self._leave(job)
            job.client.unanswered_since = None
            self.stats.decoded += 1
            try:
                melody = self.vae.melody_from_tokens(tokens, job.client.qpm)
            except Exception as e:
                self._fail([job], e)
                continue
            self.sink.melody_ready(job, melody)

    # ------------------------------------------------------------ encodes, whole batches

    def _encode(self, jobs: list[EncodeJob]) -> None:
        try:
            zs = self.vae.encode([job.melody for job in jobs])  # (B, Z)
        except Exception as e:
            self._fail(jobs, e)
            return
        self.stats.encoded += len(jobs)
        for job, z in zip(jobs, zs, strict=True):
            with self.state_lock:
                job.client.set_z(z)
            self.sink.z_ready(job, z)

    def _decode(self, jobs: list[DecodeJob]) -> None:
        """Decode the jobs as whole batches (on a GPU, where there is no rolling batch)."""
        groups: dict[tuple[float, int], list[tuple[DecodeJob, np.ndarray]]] = {}
        with self.state_lock:
            for job in jobs:
                key = (job.temperature, job.seed) if job.temperature > 0 else (0.0, 0)
                groups.setdefault(key, []).append((job, job.latent()))
        for (temperature, seed), items in groups.items():
            batch = [job for job, _ in items]
            # Stop this decode once every client of the batch has asked for something newer,
            # unless one of them has waited too long already: a flood then still hears
            # melodies instead of none.
            now = self.clock()
            cancellable = all(job.client.unanswered_since is None
                              or now - job.client.unanswered_since < MAX_UNANSWERED_S
                              for job in batch)

            def stale(batch: list[DecodeJob] = batch, cancellable: bool = cancellable) -> bool:
                gone = {id(client) for client in self.evicted}  # forgotten meanwhile
                return cancellable and all(job.client.key in self.decodes.jobs
                                           or id(job.client) in gone for job in batch)

            try:
                z = np.stack([z for _, z in items]).astype(np.float32)  # (B, Z)
                tokens = self.vae.decode_tokens(z, temperature, seed,
                                                cancel=stale).cpu().numpy()  # (B, T)
                melodies = [self.vae.melody_from_tokens(row, job.client.qpm)
                            for job, row in zip(batch, tokens, strict=True)]
            except DecodeCancelled:
                self.stats.cancelled += len(batch)  # their newer requests are waiting
                for job in batch:
                    if job.client.unanswered_since is None:
                        job.client.unanswered_since = now
                continue
            except Exception as e:
                self._fail(batch, e)
                continue
            self._deliver(batch, melodies)

    def _deliver(self, batch: list[DecodeJob], melodies: list[Melody]) -> None:
        """Count a decoded batch and hand its melodies to the sink."""
        for job in batch:
            job.client.unanswered_since = None
        self.stats.batches += 1
        self.stats.decoded += len(batch)
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        for job, melody in zip(batch, melodies, strict=True):
            self.sink.melody_ready(job, melody)

    def _section_codes(self, client: ClientState) -> np.ndarray:
        """The client's section codes with its waiting edits applied, kept as its own
        (state lock held): (sections, code_dim)."""
        vae = cast("PhraseMelodyVAE", self.vae)  # the core sends section jobs for these only
        codes = client.codes if client.codes is not None else vae.codes(client.z)[0]
        for edit in client.section_edits:
            if edit.melody is not None:
                codes = codes.copy()
                codes[edit.index] = vae.section.encode(edit.melody)
            else:
                codes = vae.vary_codes(codes, edit.index, edit.amount, edit.seed)
        client.codes, client.section_edits = codes, []
        return codes

    def _decode_sections(self, jobs: list[DecodeJob]) -> None:
        """Decode the section codes of phrase-model clients, one batch per (temperature,
        seed) group; a client's z decodes still running are stale now."""
        if self.rolling is not None:
            for job in jobs:
                for old in list(self.flying.get(job.client.key, [])):
                    self._leave(old)
                    self.stats.cancelled += 1
        groups: dict[tuple[float, int], list[tuple[DecodeJob, np.ndarray]]] = {}
        for job in jobs:
            key = (job.temperature, job.seed) if job.temperature > 0 else (0.0, 0)
            try:
                with self.state_lock:
                    codes = self._section_codes(job.client)
            except Exception as e:
                self._fail([job], e)
                continue
            groups.setdefault(key, []).append((job, codes))
        for (temperature, seed), items in groups.items():
            batch = [job for job, _ in items]
            try:
                codes = np.stack([c for _, c in items])  # (B, sections, code_dim)
                tokens = cast("PhraseMelodyVAE", self.vae).decode_codes(
                    codes, temperature, seed).cpu().numpy()  # (B, T)
                melodies = [self.vae.melody_from_tokens(row, job.client.qpm)
                            for job, row in zip(batch, tokens, strict=True)]
            except Exception as e:
                self._fail(batch, e)
                continue
            self._deliver(batch, melodies)

    def _fail(self, jobs: list[DecodeJob] | list[EncodeJob], error: Exception) -> None:
        if isinstance(error, MelodyVAEError):
            reason = str(error)
        else:
            _LOGGER.exception("the model failed on a batch of %d", len(jobs))
            reason = f"internal error: {type(error).__name__}: {error}"
        for job in jobs:
            self.sink.failed(job.client, job.address, reason)

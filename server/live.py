"""Live improvisation: the server listens to a performer and answers each phrase on its bar line.

A client that sends ``/mvae/listen 1`` gets a *live clock*: bar lines at known Unix times
(step 0 where listening began, or wherever ``/mvae/sync`` put it), at the client's tempo.
The performer's ``/mvae/in/noteon`` / ``/mvae/in/noteoff`` are placed on that clock — at
their bundle's timetag when they come in a timed bundle, else when they arrive — and kept.

Every *phrase line* (a bar line at a multiple of the model's length) is answered if
anything was played in the phrase before it, and so is the first reachable bar line after
``/mvae/answer``. At the line's *deadline* — the bar line less the client's lookahead less
an estimate of the time an answer takes — what was played is cut to the phrase (a note
still held ends at the bar line): that is the *call* the answer must hear. The model thread
encodes a call, moves its latent vector by the answer mode and decodes (answers.py).

The answer is composed before the deadline, while the phrase is played: from the *draft
time* (the deadline less ``DRAFT_S`` or ``DRAFT_ESTIMATES`` estimates, whichever is longer,
at most half the phrase) the listener hands the model thread a draft from the notes so far,
and another whenever the call changed and no draft is in flight. At the deadline, a draft
that heard the final call is the answer and is cued at once; otherwise the final call is
composed then. The answer cued is the one that heard the final call; if it is not ready
``LAST_CALL_S`` before the lookahead, the newest ready draft is cued instead (the last notes
played are then missing from what it heard). The player starts it exactly on the bar line
(playback.py sends that bar line's bundle at once). An answer with nothing ready one
lookahead before its bar line is dropped with ``/mvae/error``, never played late.

The estimate is ``SAFETY`` times the longest compose time (handed over to ready) of the last
``SAMPLES`` compositions (before the first, a calibration run of three answers due together
stands in) plus ``WAKE_MARGIN``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from melodyvae.errors import MelodyVAEError
from melodyvae.melody import Melody, Note
from melodyvae.server.answers import SILENT_RETRIES, AnswerRequest, Pending, Result, compose
from melodyvae.server.engine import Engine
from melodyvae.server.playback import Player
from melodyvae.server.protocol import PREFIX, Args, encode_message
from melodyvae.server.session import (
    DEFAULT_AMOUNT,
    DEFAULT_ATTRIBUTE_AMOUNT,
    DEFAULT_MIX,
    LiveClock,
    Session,
)
from melodyvae.server.state import Addr, AxesError, ClientState
from melodyvae.server.worker import Worker

if TYPE_CHECKING:
    from melodyvae.inference import MelodyVAE

_LOGGER = logging.getLogger(__name__)

MODES = ("echo", "contrast", "blend")
ANSWER_ADDRESS = f"{PREFIX}/answer"  # where answer failures are reported
MAX_AMOUNT = 10.0
MAX_NAME = 64
MAX_SKEW = 10.0  # seconds a note's timetag may lie from the server's clock
MAX_SYNC_BEAT = 1e6  # |beat| accepted by /mvae/sync
MAX_DUE = 16  # phrase lines handled in one pass; past that the listener skips ahead
DEFAULT_ESTIMATE = 0.05  # seconds an answer is assumed to take before anything is measured
SAFETY = 1.5  # the estimate is SAFETY x the slowest recent answer ...
WAKE_MARGIN = 0.02  # ... plus this many seconds for thread wake-ups
MAX_ESTIMATE = 0.5  # seconds; a stall does not push deadlines further than this
SAMPLES = 32  # compositions the estimate looks back on
DRAFT_S = 0.5  # seconds before the deadline the first draft is composed ...
DRAFT_ESTIMATES = 4.0  # ... or this many estimates before it, if longer ...
DRAFT_PHRASE = 0.5  # ... but at most this share of the phrase before it
LAST_CALL_S = WAKE_MARGIN  # the newest ready draft is cued this long before the lookahead
LOST_AFTER_S = 2.0  # a composition not back this long after its bar line is taken as lost
CALIBRATION_KEY: Addr = ("live", 0)  # the engine slot of the calibration task


class LiveError(MelodyVAEError):
    """A live request the client's state does not allow (e.g. /mvae/answer unheard)."""


def answer_begin(answer_id: int, bar: int, mode: str) -> bytes:
    """``/mvae/answer/begin i id, i bar, s mode`` (in the answer's first bundle)."""
    return encode_message(f"{PREFIX}/answer/begin", "iis", [answer_id, bar, mode])


def answer_end(answer_id: int) -> bytes:
    """``/mvae/answer/end i id`` (in the bundle where the answer ends)."""
    return encode_message(f"{PREFIX}/answer/end", "i", [answer_id])


Handler = Callable[[ClientState, Args], None]


class Listener(Worker):
    """Live clocks, performer notes and answer deadlines for every listening client.

    Its state is guarded by the server's state lock (the handlers run under it); its thread
    waits on a condition of that lock until the next deadline, or until poked when plans
    change.
    """

    thread_name = "mvae-live"

    def __init__(self, vae: MelodyVAE, player: Player, engine: Engine,
                 lock: threading.RLock, attributes: dict[str, np.ndarray],
                 send: Callable[[bytes, Addr], None],
                 error: Callable[[Addr, str, str], None], next_id: Callable[[], int],
                 clock: Callable[[], float] = time.time) -> None:
        self.vae = vae
        self.player = player
        self.engine = engine
        self.lock = lock
        self.attributes = attributes
        self.send = send
        self.error = error
        self.next_id = next_id
        self.clock = clock
        self.phrase_steps = vae.steps  # a phrase is the model's length
        self.steps_per_bar = vae.steps_per_bar
        self.sessions: dict[Addr, Session] = {}  # bounded by the client table (forget)
        self.samples: deque[float] = deque(maxlen=SAMPLES)  # seconds, deadline to ready
        self.calibrating = False
        self.batches = 0  # answer tasks handed to the model thread
        self._wake_at: float | None = None  # the next deadline (clock seconds)
        super().__init__(threading.Condition(lock))

    # ------------------------------------------------------------ lifecycle
    def handlers(self) -> dict[str, Handler]:
        return {f"{PREFIX}/{name}": handler for name, handler in (
            ("in/noteon", self._noteon), ("in/noteoff", self._noteoff),
            ("sync", self._sync), ("listen", self._listen), ("answer", self._answer_now),
            ("answer/mode", self._mode), ("answer/amount", self._amount),
            ("answer/attribute", self._attribute), ("answer/mix", self._mix),
            ("answer/stats", self._stats),
        )}

    def forget(self, key: Addr) -> None:
        """Drop a client's session (it was evicted)."""
        with self.lock:
            self.sessions.pop(key, None)

    @property
    def estimate(self) -> float:
        """Seconds an answer is expected to take from being handed to the model thread to
        being ready (what the deadline leaves it before the lookahead)."""
        if not self.samples:
            return DEFAULT_ESTIMATE
        return min(MAX_ESTIMATE, SAFETY * max(self.samples) + WAKE_MARGIN)

    # ------------------------------------------------------------ from other handlers
    def set_tempo(self, client: ClientState, anchor: tuple[int, float] | None) -> None:
        """The client's tempo changed (``client.qpm``); ``anchor`` is the step and time the
        player turned at, if an answer is playing, so both stay on one grid."""
        session = self.sessions.get(client.key)
        if session is None:
            return
        if anchor is None:
            now = self.clock()
            session.clock.set_tempo(client.qpm, session.clock.position(now), now)
        else:
            session.clock.set_tempo(client.qpm, *anchor)
        self._replan(session)

    def wake(self) -> None:
        """Recompute deadlines (a client's lookahead changed). Call with the lock held."""
        self.poke()

    # ------------------------------------------------------------ deadlines
    def _lead(self, session: Session) -> float:
        return session.client.lookahead + self.estimate

    def _first_line(self, session: Session, every: int, now: float) -> int:
        """The first multiple of ``every`` steps whose deadline is still ahead of ``now``."""
        position = session.clock.position(now + self._lead(session))
        return (math.floor(position / every) + 1) * every

    def _replan(self, session: Session) -> None:
        if session.listening:
            now = self.clock()
            session.next_line = self._first_line(session, self.phrase_steps, now)
            if session.last_line is not None:  # never a line already answered (a slower
                after = (session.last_line // self.phrase_steps + 1) * self.phrase_steps
                session.next_line = max(session.next_line, after)  # tempo moves lines back)
            if session.requested is not None:
                session.requested = self._first_line(session, self.steps_per_bar, now)
        self.poke()

    def _draft_lead(self, session: Session) -> float:
        """Seconds before the deadline that drafting begins."""
        phrase_s = self.phrase_steps * session.clock.seconds_per_step
        return min(DRAFT_PHRASE * phrase_s, max(DRAFT_S, DRAFT_ESTIMATES * self.estimate))

    def run_due(self, now: float | None = None) -> float | None:
        """Hand the model thread every draft and final request that is due — all of them one
        task, so answers due together are encoded and decoded as one batch — and cue the
        answers whose deadline or last call has come; return the time of the next deadline,
        draft time or last call (None: none). The listener thread's step; call with the
        state lock held."""
        now = self.clock() if now is None else now
        wake: float | None = None
        requests: list[AnswerRequest] = []

        def at(moment: float) -> None:
            nonlocal wake
            wake = moment if wake is None else min(wake, moment)

        for session in list(self.sessions.values()):
            if not session.listening:
                continue
            lead = self._lead(session)
            clock = session.clock
            if session.requested is not None and clock.time_of(session.requested) - lead <= now:
                line, session.requested = session.requested, None
                if line == session.next_line:
                    session.next_line += self.phrase_steps
                self._fire(session, line, now, True, requests)
            due = 0
            while clock.time_of(session.next_line) - lead <= now:
                line = session.next_line
                session.next_line += self.phrase_steps
                due += 1
                if due > MAX_DUE:
                    _LOGGER.warning("live clock of %s fell behind; skipping ahead",
                                    session.client.key)
                    session.next_line = self._first_line(session, self.phrase_steps, now)
                    break
                self._fire(session, line, now, False, requests)
            planned = [line for line in (session.next_line, session.requested)
                       if line is not None]
            for line, pending in list(session.pending.items()):
                if pending.final is None and line not in planned:
                    del session.pending[line]  # its line moved (tempo, sync)
            draft_lead = self._draft_lead(session)
            for line in planned:
                deadline = clock.time_of(line) - lead
                at(deadline)
                if now >= deadline - draft_lead:
                    self._draft(session, line, requests)
                else:
                    at(deadline - draft_lead)
            for pending in list(session.pending.values()):
                if pending.final is None:
                    continue
                bar_time = clock.time_of(pending.line)
                last_call = bar_time - session.client.lookahead - LAST_CALL_S
                if now < last_call:
                    at(last_call)
                elif now > bar_time + (LOST_AFTER_S if pending.in_flight else 0.0):
                    self._lost(session, pending)  # nothing composed came back in time
                else:
                    self._last_call(session, pending)
        if requests:
            self.batches += 1
            for request in requests:
                request.submitted = now
            self.engine.submit_task(("live", self.batches), lambda: self._answer(requests))
        return wake

    def _request(self, session: Session, pending: Pending, call: Melody,
                 deadline: float) -> AnswerRequest:
        """What the model thread needs to compose ``call`` with the session's settings now."""
        client = session.client
        return AnswerRequest(
            client.key, pending.line, call, session.mode, session.amount, session.attribute,
            session.attribute_amount, session.mix, client.z.copy(), client.temperature,
            (client.seed + pending.number) % 2**63, deadline, session, pending)

    def _pending(self, session: Session, line: int) -> Pending:
        pending = session.pending.get(line)
        if pending is None:
            session.count += 1
            pending = session.pending[line] = Pending(line, session.count)
        return pending

    def _submit(self, pending: Pending, request: AnswerRequest,
                requests: list[AnswerRequest]) -> None:
        pending.submitted = request
        pending.in_flight += 1
        requests.append(request)

    def _draft(self, session: Session, line: int, requests: list[AnswerRequest]) -> None:
        """Compose a draft of the answer to ``line`` from what was played so far, unless
        one is in flight or the newest heard the same."""
        call = session.call(line, self.phrase_steps, self.steps_per_bar)
        if call is None:
            return  # nothing played yet
        pending = self._pending(session, line)
        if pending.in_flight:
            return  # one at a time; the listener is poked when it comes back
        request = self._request(session, pending, call,
                                session.clock.time_of(line) - self._lead(session))
        if pending.submitted is None or not pending.submitted.same_answer(request):
            self._submit(pending, request, requests)

    def _fire(self, session: Session, line: int, now: float, manual: bool,
              requests: list[AnswerRequest]) -> None:
        """The deadline of ``line``: fix the call; cue a draft that heard it, or compose it."""
        client = session.client
        bar = line // self.steps_per_bar
        if line == session.last_line:
            return
        session.last_line = line
        call = session.call(line, self.phrase_steps, self.steps_per_bar)
        if call is None:
            session.pending.pop(line, None)
            session.silent += 1
            if manual:
                self.error(client.key, ANSWER_ADDRESS,
                           f"nothing was played in the {self.vae.bars} bars before bar {bar}; "
                           f"silence is not answered")
            return
        bar_time = session.clock.time_of(line)
        if now > bar_time - client.lookahead:  # the listener itself woke too late
            session.pending.pop(line, None)
            session.dropped += 1
            self.error(client.key, ANSWER_ADDRESS,
                       f"answer for bar {bar} dropped: the server reached it "
                       f"{(now - bar_time + self._lead(session)) * 1000:.0f} ms after its "
                       "deadline")
            return
        pending = self._pending(session, line)
        pending.final = self._request(session, pending, call, bar_time - self._lead(session))
        ready = pending.final_ready()
        if ready is not None:
            self._finish(session, pending, *ready)
        elif not (pending.in_flight and pending.submitted is not None
                  and pending.submitted.same_answer(pending.final)):
            self._submit(pending, pending.final, requests)

    def _last_call(self, session: Session, pending: Pending) -> None:
        """One lookahead (and ``LAST_CALL_S``) before the line and the answer that heard the
        final call is not ready: cue the newest ready draft, if there is one with notes."""
        if pending.ready is None or pending.ready[1][0] is None:
            return  # nothing to send yet: the answer is dropped when it comes back late
        session.drafts_sent += 1
        _LOGGER.info("answer for bar %d of %s: sent the draft; its last notes came too late",
                     pending.line // self.steps_per_bar, session.client.key)
        self._finish(session, pending, *pending.ready)

    def _lost(self, session: Session, pending: Pending) -> None:
        """The bar line passed with nothing sent, and nothing on its way or nothing back
        ``LOST_AFTER_S`` after it (a composition was lost): say so, once."""
        del session.pending[pending.line]
        session.dropped += 1
        self.error(session.client.key, ANSWER_ADDRESS,
                   f"answer for bar {pending.line // self.steps_per_bar} dropped: nothing "
                   "was ready by its bar line")

    def _finish(self, session: Session, pending: Pending, request: AnswerRequest,
                result: Result, ready: float) -> None:
        """Cue ``result`` as the answer to its line; the line is done (state lock held)."""
        if session.pending.get(pending.line) is pending:
            del session.pending[pending.line]
        melody, z_call, z = result
        self._cue(request, melody, z_call, z, ready)

    def wait_seconds(self) -> float | None:
        return None if self._wake_at is None else self._wake_at - self.clock()

    def run_pending(self) -> int:
        """The listener thread's step: :meth:`run_due` under the state lock."""
        with self.lock:
            try:
                self._wake_at = self.run_due()
            except Exception:  # a bug here must not end listening for everyone
                _LOGGER.exception("live scheduling failed")
                self._wake_at = self.clock() + 0.1
        return 0

    # ------------------------------------------------------------ model thread
    def compose(self, requests: list[AnswerRequest]) -> list[Result]:
        """:func:`melodyvae.server.answers.compose` with this server's model."""
        return compose(self.vae, self.attributes, requests)

    def _answer(self, requests: list[AnswerRequest]) -> None:
        try:
            results = self.compose(requests)
        except MelodyVAEError as e:
            self._failed(requests, str(e))
            return
        except Exception as e:
            _LOGGER.exception("answering %d phrases failed", len(requests))
            self._failed(requests, f"internal error: {type(e).__name__}: {e}")
            return
        ready = self.clock()
        with self.lock:
            self.samples.append(ready - min(r.submitted for r in requests))
            self.poke()  # the estimate moved, and calls may have changed meanwhile
            for request, result in sorted(zip(requests, results, strict=True),
                                          key=lambda item: item[0].deadline):
                pending, session = request.pending, self.sessions.get(request.key)
                if (pending is None or session is None or session is not request.session
                        or session.pending.get(request.line) is not pending):
                    continue  # done meanwhile (a draft was sent), forgotten or moved
                pending.take(request, result, ready)
                final = pending.final_ready()
                if final is not None:
                    self._finish(session, pending, *final)

    def _cue(self, request: AnswerRequest, melody: Melody | None, z_call: np.ndarray,
             z: np.ndarray, ready: float) -> None:
        """Hand one answer to the player (state lock held)."""
        key, bar = request.key, request.line // self.steps_per_bar
        session = self.sessions.get(key)
        if session is None or session is not request.session or not session.listening:
            return  # forgotten, or listening stopped meanwhile
        if melody is None:
            session.failed += 1
            self.error(key, ANSWER_ADDRESS, f"answer for bar {bar} dropped: it came out "
                                            f"silent {1 + SILENT_RETRIES} times")
            return
        clock, lookahead = session.clock, session.client.lookahead
        answer_id = self.next_id()
        sent = self.player.cue(key, melody, clock.origin, clock.qpm, request.line, lookahead,
                               [answer_begin(answer_id, bar, request.mode)],
                               [answer_end(answer_id)])
        bar_time = clock.time_of(request.line)
        if sent is None:
            session.dropped += 1
            self.error(key, ANSWER_ADDRESS,
                       f"answer for bar {bar} dropped: ready "
                       f"{(ready - bar_time + lookahead) * 1000:.0f} ms too late to be sent "
                       f"{lookahead * 1000:.0f} ms before its bar line")
            return
        session.answered += 1
        session.worst_margin = min(session.worst_margin, bar_time - sent)
        session.least_spare = min(session.least_spare, bar_time - lookahead - ready)
        session.client.store("call", z_call)
        session.client.store("answer", z)

    def _failed(self, requests: list[AnswerRequest], reason: str) -> None:
        with self.lock:
            for request in requests:
                session, pending = request.session, request.pending
                if session is None or pending is None:
                    _LOGGER.warning("live calibration failed: %s", reason)
                    continue
                if session.pending.get(request.line) is not pending:
                    continue  # done meanwhile
                pending.in_flight -= 1
                if pending.final is None or not request.same_answer(pending.final):
                    _LOGGER.info("a draft of the answer for bar %d failed: %s",
                                 request.line // self.steps_per_bar, reason)
                    continue  # the deadline composes the final call again and reports
                del session.pending[request.line]
                session.failed += 1
                bar = request.line // self.steps_per_bar
                self.error(request.key, ANSWER_ADDRESS, f"answer for bar {bar}: {reason}")

    def _calibrate(self) -> None:
        """Time the answers to three performers due at one bar line, one per kind of
        answer (echo, blend, then contrast if the model has attributes, else a sampled
        echo), on a made-up phrase, after one untimed run that warms every path up."""
        notes = tuple(Note(s, s + 2, 60 + (s * 7) % 12) for s in range(0, self.phrase_steps, 2))
        call = Melody(notes, self.phrase_steps, self.steps_per_bar)
        attribute = next(iter(self.attributes), None)
        kinds = [("echo", None, 0.0), ("blend", None, 0.0),
                 ("contrast", attribute, 0.0) if attribute else ("echo", None, 1.0)]
        requests = [AnswerRequest(CALIBRATION_KEY, self.phrase_steps, call, mode,
                                  DEFAULT_AMOUNT, name, DEFAULT_ATTRIBUTE_AMOUNT, DEFAULT_MIX,
                                  np.zeros(self.vae.z_dim), temperature, i, 0.0)
                    for i, (mode, name, temperature) in enumerate(kinds)]
        try:
            self.compose(requests)
            started = time.perf_counter()
            self.compose(requests)
            elapsed = time.perf_counter() - started
        except Exception:
            _LOGGER.exception("live calibration failed")
            return
        with self.lock:
            self.samples.append(elapsed)
            self.poke()
            _LOGGER.info("three answers due together take %.1f ms; answering %.0f ms ahead of "
                         "the lookahead",
                         elapsed * 1000, self.estimate * 1000)

    # ------------------------------------------------------------ handlers (network thread)
    def _session(self, client: ClientState) -> Session:
        session = self.sessions.get(client.key)
        if session is None or session.client is not client:
            session = Session(client, LiveClock(client.qpm, self.clock()))
            self.sessions[client.key] = session
        return session

    def _time(self, args: Args) -> float:
        """When a message happened: its bundle's timetag, else now."""
        now = self.clock()
        at = args.message.timetag
        if at is None:
            return now
        if abs(at - now) > MAX_SKEW:
            raise args.error(f"timetag lies {at - now:+.1f} s from the server's clock (at most "
                             f"{MAX_SKEW:g} s); send it outside a bundle to use its arrival")
        return at

    def _noteon(self, client: ClientState, args: Args) -> None:
        args.count(2)
        pitch = args.integer(0, "pitch", 0, 127)
        velocity = args.integer(1, "velocity", 0, 127)
        at = self._time(args)
        session = self.sessions.get(client.key)
        if session is None or not session.listening:
            return  # notes count only while listening
        if velocity == 0:  # MIDI's note-off
            session.release(pitch, session.clock.position(at))
        else:
            session.press(pitch, velocity, session.clock.position(at))
        if session.pending:
            self.poke()  # a draft may need composing again

    def _noteoff(self, client: ClientState, args: Args) -> None:
        args.count(1, 2)  # a release velocity is accepted and ignored
        pitch = args.integer(0, "pitch", 0, 127)
        at = self._time(args)
        session = self.sessions.get(client.key)
        if session is not None and session.listening:
            session.release(pitch, session.clock.position(at))
            if session.pending:
                self.poke()

    def _sync(self, client: ClientState, args: Args) -> None:
        args.count(1)
        beat = args.number(0, "beat", -MAX_SYNC_BEAT, MAX_SYNC_BEAT)
        at = self._time(args)
        session = self._session(client)
        clock = session.clock
        origin = at - beat * 60.0 / clock.qpm
        shift = (clock.origin - origin) / clock.seconds_per_step
        for played in session.notes:  # the notes keep their times, so move on the grid
            played.on += shift
            if played.off is not None:
                played.off += shift
        clock.origin = origin
        session.synced = True
        self._replan(session)

    def _listen(self, client: ClientState, args: Args) -> None:
        args.count(1)
        on = args.integer(0, "on", 0, 1)
        at = self._time(args)
        session = self._session(client)
        if not on:
            session.listening = False
            session.requested = None
            session.forget_notes()
            return
        if session.listening:
            return
        if not session.synced:  # a bar line where listening starts
            session.clock = LiveClock(client.qpm, at)
        session.forget_notes()
        session.last_line = None
        session.listening = True
        self._replan(session)
        if not self.calibrating:
            self.calibrating = True
            self.engine.submit_task(CALIBRATION_KEY, self._calibrate)

    def _answer_now(self, client: ClientState, args: Args) -> None:
        args.count(0)
        session = self.sessions.get(client.key)
        if session is None or not session.listening:
            raise LiveError("not listening; send /mvae/listen 1 first")
        session.requested = self._first_line(session, self.steps_per_bar, self.clock())
        self.poke()

    def _require_attributes(self) -> None:
        if not self.attributes:
            raise AxesError("contrast needs the model's attribute vectors and it has none; "
                            "run melodyvae axes MODEL")

    def _mode(self, client: ClientState, args: Args) -> None:
        args.count(1)
        mode = args.string(0, "mode", MAX_NAME)
        if mode not in MODES:
            raise args.error(f"mode must be echo, contrast or blend, not {mode!r}")
        if mode == "contrast":
            self._require_attributes()
        session = self._session(client)
        if mode == "contrast" and session.attribute is None:
            session.attribute = next(iter(self.attributes))
        session.mode = mode

    def _amount(self, client: ClientState, args: Args) -> None:
        args.count(1)
        self._session(client).amount = args.number(0, "amount", 0.0, MAX_AMOUNT)

    def _attribute(self, client: ClientState, args: Args) -> None:
        args.count(2)
        name = args.string(0, "name", MAX_NAME)
        amount = args.number(1, "amount", -MAX_AMOUNT, MAX_AMOUNT)
        self._require_attributes()
        if name not in self.attributes:
            raise AxesError(f"unknown attribute {name!r}; the model has: "
                            f"{', '.join(self.attributes)}")
        session = self._session(client)
        session.attribute, session.attribute_amount = name, amount

    def _mix(self, client: ClientState, args: Args) -> None:
        args.count(1)
        self._session(client).mix = min(1.0, max(0.0, args.number(0, "mix")))

    def _stats(self, client: ClientState, args: Args) -> None:
        args.count(0)
        session = self._session(client)
        worst = session.worst_margin if math.isfinite(session.worst_margin) else 0.0
        self.send(encode_message(
            f"{PREFIX}/answer/stats", "iiiiff",
            [session.answered, session.dropped, session.silent, session.failed,
             self.estimate * 1000, worst * 1000]), client.key)

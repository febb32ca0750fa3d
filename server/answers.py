"""Composing live answers with the model: encode the phrases played, move each latent vector
by its answer mode (echo: noise; contrast: along an attribute; blend: toward the client's
z), decode. Runs on the model thread; live.py decides when and cues the results.

An answer to one bar line is composed more than once: drafts from what has been played so
far while the phrase is still being played, then, at the line's deadline, from the phrase
as it finally stands unless a draft already heard exactly that (:class:`Pending`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from melodyvae.axes import AxesError
from melodyvae.inference import slerp, vary
from melodyvae.melody import Melody
from melodyvae.server.session import Session
from melodyvae.server.state import Addr

if TYPE_CHECKING:
    from melodyvae.inference import MelodyVAE

SILENT_RETRIES = 3  # a silent answer is decoded again this often, sampled ...
RETRY_TEMPERATURE = 1.0  # ... at least this hot, with the next seeds

_NUMBERS = itertools.count(1)  # orders requests: a later request composes a later draft

Result = tuple[Melody | None, np.ndarray, np.ndarray]  # (answer or None: silent; z call; z)


@dataclass
class AnswerRequest:
    """Everything the model thread needs for one answer, read when its deadline came."""

    key: Addr
    line: int  # the bar line it starts on (absolute step)
    call: Melody  # the phrase played
    mode: str
    amount: float
    attribute: str | None
    attribute_amount: float
    mix: float
    z_now: np.ndarray  # the client's z (blend)
    temperature: float
    seed: int
    deadline: float  # Unix seconds the request was due to be made
    session: Session | None = None  # None: the calibration run
    pending: Pending | None = None  # the answer it composes for (None: calibration)
    submitted: float = 0.0  # Unix seconds it was handed to the model thread
    number: int = field(default_factory=lambda: next(_NUMBERS))

    def same_answer(self, other: AnswerRequest) -> bool:
        """Whether ``other`` composes the same answer (the same call, settings and seed)."""
        return (self.call == other.call and self.mode == other.mode
                and self.amount == other.amount and self.attribute == other.attribute
                and self.attribute_amount == other.attribute_amount
                and self.mix == other.mix and self.temperature == other.temperature
                and self.seed == other.seed
                and (self.mode != "blend" or np.array_equal(self.z_now, other.z_now)))


@dataclass
class Pending:
    """The answer to one bar line while it is being composed.

    Drafts are composed from the phrase so far, one at a time, again whenever what was
    played (or a setting) changed; at the deadline ``final`` is what the answer must hear.
    The answer sent is the ready one that composed ``final``, or, if that is not ready one
    lookahead before the bar line, the newest ready draft."""

    line: int  # the bar line (absolute step)
    number: int  # the session's answer count when it began (numbers its seed)
    submitted: AnswerRequest | None = None  # the newest request handed to the model thread
    in_flight: int = 0  # requests handed over and not back yet
    ready: tuple[AnswerRequest, Result, float] | None = None  # newest composed: result, when
    final: AnswerRequest | None = None  # set at the deadline

    def take(self, request: AnswerRequest, result: Result, at: float) -> None:
        """A composed answer came back at ``at``; keep it if it is the newest."""
        self.in_flight -= 1
        if self.ready is None or request.number > self.ready[0].number:
            self.ready = (request, result, at)

    def final_ready(self) -> tuple[AnswerRequest, Result, float] | None:
        """The ready answer that heard exactly what the deadline asked for, if any."""
        if self.final is None or self.ready is None:
            return None
        return self.ready if self.ready[0].same_answer(self.final) else None


def compose(vae: MelodyVAE, attributes: dict[str, np.ndarray], requests: list[AnswerRequest]
            ) -> list[Result]:
    """Encode the calls (one batch), move each z by its mode, decode (greedy ones as one
    batch, sampled ones each with its seed, so an answer does not depend on what else
    was due): (answer, or None if it stayed silent; z of the call; z of the answer) per
    request. Runs on the model thread."""
    z_calls = np.asarray(vae.encode([r.call for r in requests]), np.float64)  # (B, Z)
    zs = np.stack([_move(attributes, r, z) for r, z in zip(requests, z_calls, strict=True)])
    melodies: list[Melody | None] = [None] * len(requests)
    greedy = [i for i, r in enumerate(requests) if r.temperature == 0]
    if greedy:
        tokens = vae.decode_tokens(zs[greedy].astype(np.float32), 0.0)  # (G, T)
        for i, row in zip(greedy, tokens.cpu().numpy(), strict=True):
            melodies[i] = vae.melody_from_tokens(row, requests[i].call.qpm)
    for i, request in enumerate(requests):
        qpm = request.call.qpm
        temperature, seed = request.temperature, request.seed
        if i not in greedy:
            melodies[i] = _decode_one(vae, zs[i], temperature, seed, qpm)
        for _ in range(SILENT_RETRIES):
            melody = melodies[i]
            if melody is not None and melody.notes:
                break
            temperature, seed = max(temperature, RETRY_TEMPERATURE), seed + 1
            melodies[i] = _decode_one(vae, zs[i], temperature, seed, qpm)
    return [(m if m is not None and m.notes else None, z_call, z)
            for m, z_call, z in zip(melodies, z_calls, zs, strict=True)]

def _decode_one(vae: MelodyVAE, z: np.ndarray, temperature: float, seed: int, qpm: float) -> Melody:
    tokens = vae.decode_tokens(z[None].astype(np.float32), temperature, seed)  # (1, T)
    return vae.melody_from_tokens(tokens[0].cpu().numpy(), qpm)

def _move(attributes: dict[str, np.ndarray], request: AnswerRequest, z_call: np.ndarray
          ) -> np.ndarray:
    """The answer's latent vector: the call's, moved by the mode."""
    if request.mode == "echo":
        return vary(z_call, request.amount, request.seed)
    if request.mode == "contrast":
        vector = attributes.get(request.attribute or "")
        if vector is None:
            raise AxesError(f"the model has no attribute {request.attribute!r}")
        return z_call + request.attribute_amount * vector

    return slerp(z_call, request.z_now, request.mix)

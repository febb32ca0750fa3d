"""Composing live answers with the model: encode the phrases played, move each latent vector
by its answer mode (echo: noise; contrast: along an attribute; blend: toward the client's
z), decode. Runs on the model thread; live.py decides when and cues the results."""

from __future__ import annotations

from dataclasses import dataclass
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


def compose(vae: MelodyVAE, attributes: dict[str, np.ndarray], requests: list[AnswerRequest]
            ) -> list[tuple[Melody | None, np.ndarray, np.ndarray]]:
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

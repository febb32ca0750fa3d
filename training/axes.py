"""Latent axes: PCA directions for XY pads and attribute vectors for sliders.

* PCA of the posterior means of training phrases: the first 8 directions, their mean and
  standard deviations, so a pad coordinate of 1.0 is one standard deviation along an axis.
* Attribute vectors as in MusicVAE section 5.3: the mean z of the phrases in the top quartile
  of an attribute minus the mean z of the bottom quartile. Adding the vector to a z moves
  the melody from "low" to "high" in that attribute.

Both are stored in the checkpoint's JSON under ``axes`` (the document of
:mod:`melodyvae.axes`), so user-trained models get sliders too (``melodyvae axes MODEL
DATA``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from melodyvae import axes as axes_schema
from melodyvae.axes import PCA_AXES
from melodyvae.melody import HOLD, REST

if TYPE_CHECKING:
    from melodyvae.inference import MelodyVAE

MAX_PHRASES = 20000  # phrases the axes are computed from at most

# Attribute functions take one phrase's tokens (T,) and return a float (nan when undefined).


def _onsets(tokens: np.ndarray) -> np.ndarray:
    return np.flatnonzero(tokens >= 2)


def note_density(tokens: np.ndarray, steps_per_bar: int = 16) -> float:
    """Notes per bar."""
    return len(_onsets(tokens)) / (len(tokens) / steps_per_bar)


def mean_pitch(tokens: np.ndarray) -> float:
    """Mean MIDI pitch of the notes."""
    notes = tokens[tokens >= 2]
    return float(notes.mean() + 19) if len(notes) else math.nan


def pitch_range(tokens: np.ndarray) -> float:
    """Highest minus lowest pitch, semitones."""
    notes = tokens[tokens >= 2]
    return float(notes.max() - notes.min()) if len(notes) else math.nan


def mean_interval(tokens: np.ndarray) -> float:
    """Mean absolute interval between consecutive notes, semitones."""
    notes = tokens[tokens >= 2].astype(np.int64)
    return float(np.abs(np.diff(notes)).mean()) if len(notes) > 1 else math.nan


def syncopation(tokens: np.ndarray) -> float:
    """Share of notes that begin off the beat (not on a quarter-note step)."""
    onsets = _onsets(tokens)
    return float((onsets % 4 != 0).mean()) if len(onsets) else math.nan


def rest_ratio(tokens: np.ndarray) -> float:
    """Share of steps that are silent."""
    silent = np.zeros(len(tokens), dtype=bool)
    sounding = False
    for i, token in enumerate(tokens):
        if token == REST:
            sounding = False
        elif token != HOLD:
            sounding = True
        silent[i] = not sounding
    return float(silent.mean())


ATTRIBUTES: dict[str, Callable[[np.ndarray], float]] = {
    "note_density": note_density,
    "mean_pitch": mean_pitch,
    "pitch_range": pitch_range,
    "mean_interval": mean_interval,
    "syncopation": syncopation,
    "rest_ratio": rest_ratio,
}


def attribute_table(tokens: np.ndarray, names: Sequence[str] = tuple(ATTRIBUTES)
                    ) -> np.ndarray:
    """(N, T) phrases -> (N, len(names)) attribute values (nan where undefined)."""
    return np.array([[ATTRIBUTES[n](row) for n in names] for row in tokens], dtype=np.float64)


def pca(mu: np.ndarray, k: int = PCA_AXES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (Z,), standard deviations (k,) and unit directions (k, Z) of the rows of ``mu``."""
    mean = mu.mean(axis=0)
    centred = mu - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    std = singular[:k] / math.sqrt(max(1, len(mu) - 1))
    return mean, std, vt[:k]


def attribute_vectors(mu: np.ndarray, table: np.ndarray, names: Sequence[str]
                      ) -> dict[str, list[float]]:
    """Top-quartile mean z minus bottom-quartile mean z, per attribute (ranked, so ties are
    broken by order and each quartile holds a quarter of the defined phrases)."""
    out = {}
    for j, name in enumerate(names):
        defined = np.flatnonzero(~np.isnan(table[:, j]))
        order = defined[np.argsort(table[defined, j], kind="stable")]
        q = max(1, len(order) // 4)
        out[name] = (mu[order[-q:]].mean(axis=0) - mu[order[:q]].mean(axis=0)).tolist()
    return out


def axes_document(mu: np.ndarray, tokens: np.ndarray) -> dict[str, Any]:
    """The ``axes`` entry of a checkpoint, from posterior means (N, Z) of phrases (N, T)."""
    names = list(ATTRIBUTES)
    table = attribute_table(tokens, names)
    mean, std, directions = pca(mu)
    vectors = {name: np.asarray(v) for name, v in attribute_vectors(mu, table, names).items()}
    return axes_schema.axes_document(mean, std, directions, vectors,
                                     np.nanstd(table, axis=0), len(mu))


def compute_axes(vae: MelodyVAE, tokens: np.ndarray, max_phrases: int = MAX_PHRASES
                 ) -> tuple[dict[str, Any], int]:
    """The ``axes`` entry for ``vae`` from phrases (N, T), at most ``max_phrases`` of them
    (a fixed random subset, in order); the document and the number of phrases used."""
    if len(tokens) > max_phrases:
        rng = np.random.default_rng(0)
        tokens = tokens[np.sort(rng.choice(len(tokens), max_phrases, replace=False))]
    return axes_document(vae.encode_means(tokens), tokens), len(tokens)

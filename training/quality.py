"""Checks that the latent space holds up: attribute sliders, prior samples, interpolations."""

from __future__ import annotations

from typing import Any

import numpy as np

from melodyvae.inference import MelodyVAE, slerp
from melodyvae.melody import MelodyError
from melodyvae.training.axes import attribute_table

ALPHAS = np.linspace(-2.0, 2.0, 9)  # steps along an attribute vector


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = ~np.isnan(y)
    if ok.sum() < 3 or np.all(y[ok] == y[ok][0]):
        return 0.0  # flat: no monotone change at all
    return float(spearmanr(x[ok], y[ok]).statistic)


def attribute_matrix(vae: MelodyVAE, start_z: np.ndarray, alphas: np.ndarray = ALPHAS
                     ) -> dict[str, Any]:
    """Move each start point along each attribute vector and measure every attribute.

    Returns ``{"names", "rho" (per vector: Spearman rho of its own attribute against the
    step, averaged over start points), "matrix" (rows: vector moved, columns: attribute;
    the diagonal holds rho, off-diagonal cells the mean absolute change of that attribute
    in units of its standard deviation over the data)}``.
    """
    axes = vae.axes
    names: list[str] = list(axes["attribute_names"])
    std = np.asarray(axes["attribute_std"], dtype=np.float64)
    n, k = len(start_z), len(alphas)
    matrix = np.zeros((len(names), len(names)))
    for i, name in enumerate(names):
        vector = np.asarray(axes["attributes"][name], dtype=np.float32)
        z = (start_z[:, None, :] + alphas[None, :, None] * vector).reshape(n * k, -1)
        tokens = vae.decode_tokens(z.astype(np.float32)).cpu().numpy()
        table = attribute_table(tokens, names).reshape(n, k, len(names))
        centre = table[:, k // 2 : k // 2 + 1, :]  # alpha = 0
        for j in range(len(names)):
            if i == j:
                matrix[i, j] = float(np.mean([_spearman(alphas, table[s, :, j])
                                              for s in range(n)]))
            else:
                change = np.abs(table[:, :, j] - centre[:, :, j]) / max(std[j], 1e-9)
                matrix[i, j] = float(np.nanmean(change))
    return {
        "names": names,
        "alphas": alphas.tolist(),
        "matrix": matrix.round(3).tolist(),
        "rho": {name: round(float(matrix[i, i]), 3) for i, name in enumerate(names)},
        "max_off_diagonal": {
            name: round(float(np.max(np.delete(matrix[i], i))), 3)
            for i, name in enumerate(names)
        },
    }


def _features(tokens: np.ndarray) -> dict[str, np.ndarray]:
    pcs, intervals, iois, counts = [], [], [], []
    for row in tokens:
        onsets = np.flatnonzero(row >= 2)
        pitches = row[onsets].astype(np.int64) + 19
        pcs.extend((pitches % 12).tolist())
        intervals.extend(np.clip(np.diff(pitches), -12, 12).tolist())
        iois.extend(np.clip(np.diff(onsets), 1, 32).tolist())
        counts.append(len(onsets))
    return {"pitch_class": np.asarray(pcs), "interval": np.asarray(intervals),
            "ioi": np.asarray(iois), "note_count": np.asarray(counts)}


_BINS = {
    "pitch_class": np.arange(-0.5, 12.5),
    "interval": np.arange(-12.5, 13.5),
    "ioi": np.arange(0.5, 33.5),
    "note_count": None,  # set from the data's range
}


def overlapping_area(a: np.ndarray, b: np.ndarray, bins: np.ndarray) -> float:
    """Shared area of two normalised histograms (1 = identical distributions)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    ha, _ = np.histogram(a, bins=bins)
    hb, _ = np.histogram(b, bins=bins)
    return float(np.minimum(ha / ha.sum(), hb / hb.sum()).sum())


def feature_overlap(samples: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Overlapping area, per feature, between generated phrases and reference phrases."""
    fa, fb = _features(samples), _features(reference)
    out = {}
    for name, bins in _BINS.items():
        if bins is None:
            top = int(max(fa[name].max(initial=0), fb[name].max(initial=0)))
            bins = np.arange(-0.5, top + 1.5)
        out[name] = round(overlapping_area(fa[name], fb[name], bins), 3)
    return out


def interpolation_check(vae: MelodyVAE, tokens: np.ndarray, pairs: int = 32, steps: int = 9,
                        seed: int = 0) -> dict[str, Any]:
    """Slerp between random pairs of phrases; every step must decode to a valid melody, and
    the mean distance to the first endpoint (share of steps whose token differs) should
    grow step by step."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(tokens), size=(pairs, 2), replace=len(tokens) < 2 * pairs)
    mu, _ = vae.encode_tokens(tokens[idx.reshape(-1)])
    mu_np = mu.float().cpu().numpy().reshape(pairs, 2, -1)
    ts = np.linspace(0.0, 1.0, steps)
    z = np.stack([[slerp(a, b, t) for t in ts] for a, b in mu_np]).astype(np.float32)
    decoded = vae.decode_tokens(z.reshape(pairs * steps, -1)).cpu().numpy()
    decoded = decoded.reshape(pairs, steps, -1)
    valid = 0
    for row in decoded.reshape(pairs * steps, -1):
        try:
            vae.melody_from_tokens(row)
        except MelodyError:  # tokens outside the vocabulary
            continue
        valid += 1
    distance = (decoded != decoded[:, :1, :]).mean(axis=2).mean(axis=0)  # (steps,)
    from melodyvae.training.measures import sample_measures

    degenerate = sample_measures(decoded.reshape(pairs * steps, -1), vae.steps_per_bar)
    return {
        "pairs": pairs,
        "steps": steps,
        "valid_fraction": valid / (pairs * steps),
        "mean_distance_to_first": [round(float(d), 4) for d in distance],
        "monotone": bool(np.all(np.diff(distance) >= -1e-9)),
        "degenerate_steps": round(degenerate["degenerate_share"] * pairs * steps),
    }


def prior_samples(vae: MelodyVAE, n: int = 1000, temperature: float = 1.0, seed: int = 0,
                  batch: int = 250) -> np.ndarray:
    rows = []
    for start in range(0, n, batch):
        z = vae.sample_z(min(batch, n - start), seed + start)
        rows.append(vae.decode_tokens(z, temperature, seed + start).cpu().numpy())
    return np.concatenate(rows)

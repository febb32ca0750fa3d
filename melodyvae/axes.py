"""The latent-axes document a checkpoint carries under ``axes``, written and read here.

::

    {"pca": {"mean": [Z], "std": [K], "directions": [K x [Z]]},  # K <= PCA_AXES
     "attributes": {name: [Z]},        # top-quartile mean z minus bottom-quartile mean z
     "attribute_std": [A], "attribute_names": [A], "n_phrases": N}

:func:`axes_document` writes it (``melodyvae.training.axes`` computes the numbers from a
corpus); :class:`LatentAxes` reads it and moves between a latent vector and its coordinates
(what the OSC server's pads and sliders set).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from melodyvae.errors import MelodyVAEError

_LOGGER = logging.getLogger(__name__)

PCA_AXES = 8  # principal axes kept: pc1..pc8


class AxesError(MelodyVAEError):
    """A model without usable latent axes, or an axis it does not have."""


class LatentAxes:
    """The PCA axes and attribute vectors a checkpoint ships, read from its document.

    A model without the document, or with a malformed one, gives axes with no directions
    whose :attr:`problem` says why (:meth:`require` raises it)."""

    def __init__(self, z_dim: int, doc: dict[str, Any] | None) -> None:
        self.z_dim = z_dim
        self.mean = np.zeros(z_dim, np.float64)
        self.std = np.ones(0, np.float64)
        self.dirs = np.zeros((0, z_dim), np.float64)  # (K, Z)
        self.attributes: dict[str, np.ndarray] = {}
        self.problem: str | None = "model has no latent axes; run melodyvae axes MODEL"
        if not doc:
            return
        try:
            self._read(doc)
        except (KeyError, TypeError, ValueError) as e:
            self.mean = np.zeros(z_dim, np.float64)
            self.std, self.dirs, self.attributes = np.ones(0), np.zeros((0, z_dim)), {}
            self.problem = f"the model's latent axes are malformed ({e}); rerun melodyvae axes"
            _LOGGER.warning("%s", self.problem)
            return
        self.problem = None

    def _read(self, doc: dict[str, Any]) -> None:
        pca = doc["pca"]
        mean = np.asarray(pca["mean"], np.float64)
        std = np.asarray(pca["std"], np.float64)
        dirs = np.asarray(pca["directions"], np.float64)
        if mean.shape != (self.z_dim,):
            raise ValueError(f"pca.mean has shape {mean.shape}, not ({self.z_dim},)")
        if dirs.ndim != 2 or dirs.shape[1] != self.z_dim or not 1 <= len(dirs) <= PCA_AXES:
            raise ValueError(f"pca.directions has shape {dirs.shape}")
        if std.shape != (len(dirs),):
            raise ValueError(f"pca.std has shape {std.shape}, not ({len(dirs)},)")
        attributes = {}
        for name, vector in (doc.get("attributes") or {}).items():
            v = np.asarray(vector, np.float64)
            if v.shape != (self.z_dim,):
                raise ValueError(f"attribute {name} has shape {v.shape}")
            attributes[str(name)] = v
        for array in (mean, std, dirs, *attributes.values()):
            if not np.all(np.isfinite(array)):
                raise ValueError("non-finite numbers")
        self.mean, self.std, self.dirs, self.attributes = mean, std, dirs, attributes

    @property
    def pc_names(self) -> list[str]:
        return [f"pc{k + 1}" for k in range(len(self.dirs))]

    @property
    def names(self) -> list[str]:
        return self.pc_names + list(self.attributes)

    def require(self) -> None:
        if self.problem:
            raise AxesError(self.problem)

    def project(self, z: np.ndarray) -> np.ndarray:
        """PCA coordinates of ``z`` in standard deviations, (K,)."""
        safe = np.where(self.std > 0, self.std, 1.0)
        return self.dirs @ (z - self.mean) / safe

    def compose(self, pcs: np.ndarray, amounts: dict[str, float]) -> np.ndarray:
        """``mean + sum pc_k std_k dir_k + sum amount_a attr_a`` (no residual), (Z,)."""
        z = self.mean + (pcs * self.std) @ self.dirs
        for name, amount in amounts.items():
            if amount:
                z = z + amount * self.attributes[name]
        return z


def axes_document(mean: np.ndarray, std: np.ndarray, directions: np.ndarray,
                  attributes: dict[str, np.ndarray], attribute_std: np.ndarray,
                  n_phrases: int) -> dict[str, Any]:
    """The ``axes`` entry of a checkpoint: PCA mean (Z,), standard deviations (K,) and unit
    directions (K, Z); attribute vectors (Z,) by name with the attributes' standard
    deviations over the phrases (A,); the number of phrases they came from."""
    return {
        "pca": {"mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist(),
                "directions": np.asarray(directions).tolist()},
        "attributes": {name: np.asarray(v).tolist() for name, v in attributes.items()},
        "attribute_std": np.asarray(attribute_std).tolist(),
        "attribute_names": list(attributes),
        "n_phrases": int(n_phrases),
    }

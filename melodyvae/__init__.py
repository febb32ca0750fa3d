"""melodyvae: a hierarchical melody VAE you play like an instrument.

``from melodyvae import MelodyVAE`` gives the inference facade (:mod:`melodyvae.inference`),
imported on first use so that ``import melodyvae`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["MelodyVAE", "__version__"]

if TYPE_CHECKING:
    from melodyvae.inference import MelodyVAE


def __getattr__(name: str) -> Any:
    if name == "MelodyVAE":
        from melodyvae.inference import MelodyVAE

        return MelodyVAE
    raise AttributeError(f"module 'melodyvae' has no attribute {name!r}")

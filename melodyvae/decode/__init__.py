"""Free-running decoding, z -> tokens, step by step with inference-only copies of a decoder's
weights (the model's ``nn.LSTM`` serves teacher forcing and training).

Backends, chosen by the ``backend`` argument of :func:`sample`:

* ``numpy`` (:mod:`.numpy_stepper`): the CPU path for up to :data:`MAX_ROWS` rows, where
  per-operation overhead, not arithmetic, is the cost;
* ``torch`` (:mod:`.torch_stepper`): CUDA, MPS, and larger CPU batches;
* ``auto``: ``numpy`` for a CPU decode of at most :data:`MAX_ROWS` rows in the model's own
  float type, ``torch`` otherwise.

Both give the same tokens for the same generator (in float64 exactly; ``tests/test_decode.py``).
:class:`Rolling` (:mod:`.rolling`) is the NumPy decode that phrases join and leave between
steps; :func:`rolling` builds one for a decoder.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from melodyvae.decode import numpy_stepper, torch_stepper
from melodyvae.decode.common import Cancel, DecodeCancelled, decode_macs, rows, weight
from melodyvae.decode.numpy_stepper import MAX_ROWS, blas_threads, numpy_context
from melodyvae.decode.rolling import Rolling
from melodyvae.model import VAE, FlatDecoder, HierarchicalDecoder

__all__ = ["MAX_ROWS", "Backend", "Cancel", "DecodeCancelled", "Rolling", "blas_threads",
           "choose_backend", "decode_macs", "numpy_context", "rolling", "sample"]

Backend = Literal["auto", "numpy", "torch"]
_Decoder = HierarchicalDecoder | FlatDecoder


def _numpy_capable(decoder: _Decoder) -> bool:
    """Whether the decoder's weights can be copied to NumPy: CPU floats."""
    w = weight(decoder.out, "weight")
    return w.device.type == "cpu" and w.dtype in (torch.float32, torch.float64)


def choose_backend(model: VAE | _Decoder, z: Tensor, backend: Backend = "auto"
                   ) -> Literal["numpy", "torch"]:
    """The backend a decode of ``z`` takes (``auto`` resolved as the module says)."""
    decoder = model.decoder if isinstance(model, VAE) else model
    if backend != "auto":
        return backend
    small = rows(decoder.cfg, z.shape[0]) <= MAX_ROWS
    same_type = z.device.type == "cpu" and z.dtype == weight(decoder.out, "weight").dtype
    return "numpy" if _numpy_capable(decoder) and small and same_type else "torch"


def sample(model: VAE | _Decoder, z: Tensor, temperature: float = 0.0,
           generator: torch.Generator | None = None, parallel: bool = True,
           cancel: Cancel | None = None, backend: Backend = "auto") -> Tensor:
    """Free-running decode: z (B, Z) -> tokens (B, T) int64 on z's device.

    ``temperature`` 0 takes the argmax; above 0 samples softmax(logits / temperature) with
    ``generator``. ``parallel`` (hierarchical only) decodes all bars as one batch; False
    decodes them one after another with the same weights and the same draws. ``cancel`` is
    asked before every step; when it returns True the decode raises
    :class:`DecodeCancelled`.
    """
    decoder = model.decoder if isinstance(model, VAE) else model
    if choose_backend(decoder, z, backend) == "numpy":
        return numpy_stepper.sample(decoder, z, temperature, generator, parallel, cancel)
    return torch_stepper.sample(decoder, z, temperature, generator, parallel, cancel)


def rolling(model: VAE | _Decoder) -> Rolling | None:
    """A :class:`Rolling` decode with the model's weights, or None where its weights are
    not NumPy's to use (on a GPU, or in half precision)."""
    decoder = model.decoder if isinstance(model, VAE) else model
    return Rolling(numpy_stepper.engine(decoder)) if _numpy_capable(decoder) else None

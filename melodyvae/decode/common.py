"""What every decode backend shares: the cancel callback, reading weights, and the cache of
inference-only copies built from a module's weights."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor, nn

from melodyvae.presets import ModelConfig

Cancel = Callable[[], bool]

_T = TypeVar("_T")


class DecodeCancelled(Exception):
    """A free-running decode was stopped by its ``cancel`` callback."""


def check(cancel: Cancel | None) -> None:
    """Raise :class:`DecodeCancelled` if ``cancel`` says so (asked before every step)."""
    if cancel is not None and cancel():
        raise DecodeCancelled


def weight(module: nn.Module, name: str) -> Tensor:
    """A parameter of ``module`` by name, detached (for inference-only copies)."""
    tensor: Tensor = getattr(module, name)
    return tensor.detach()


def rows(cfg: ModelConfig, batch: int) -> int:
    """How many rows a decode of ``batch`` phrases steps together: one per bar for the
    hierarchical decoder, one per phrase for the flat one."""
    return batch * (cfg.bars if cfg.kind == "hier" else 1)


_CACHES: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


def cached(module: nn.Module, key: str, build: Callable[[], _T]) -> _T:
    """``build()`` cached for ``module`` until one of its weights is replaced or updated in
    place by autograd-visible ops (optimizer steps, ``load_state_dict``). Edits through
    ``param.data`` are invisible to it. Kept outside the module so that it never travels
    with ``copy.deepcopy`` or ``state_dict``."""
    version = tuple((p.data_ptr(), p._version) for p in module.parameters())
    caches = _CACHES.setdefault(module, {})
    entry = caches.get(key)
    if entry is None or entry[0] != version:
        entry = (version, build())
        caches[key] = entry
    result: _T = entry[1]
    return result


def _lstm_macs(input_size: int, hidden: int, layers: int) -> int:
    return sum(4 * hidden * ((input_size if k == 0 else hidden) + hidden)
               for k in range(layers))


def _step_macs(hidden: int, layers: int, vocab: int) -> int:
    """Multiply-adds of one token step of one row: layer 0's recurrent GEMM (its input
    projection is a table lookup), the upper layers' GEMMs, the output layer."""
    return 4 * hidden * hidden + (layers - 1) * 4 * hidden * 2 * hidden + hidden * vocab


def decode_macs(cfg: ModelConfig) -> int:
    """Multiply-adds of one free-running decode of one phrase (batch 1) by these steppers."""
    if cfg.kind == "hier":
        conductor = cfg.bars * _lstm_macs(1, cfg.cond_hidden, cfg.cond_layers)
        per_bar = (cfg.cond_hidden * 2 * cfg.dec_layers * cfg.dec_hidden  # bar state init
                   + cfg.cond_hidden * 4 * cfg.dec_hidden  # per-bar input gates
                   + cfg.steps_per_bar * _step_macs(cfg.dec_hidden, cfg.dec_layers,
                                                    cfg.vocab_size))
        return conductor + cfg.bars * per_bar
    return (cfg.z_dim * 2 * cfg.dec_layers * cfg.dec_hidden + cfg.z_dim * 4 * cfg.dec_hidden
            + cfg.steps * _step_macs(cfg.dec_hidden, cfg.dec_layers, cfg.vocab_size))

"""The inference facade of a phrase model: the :class:`~melodyvae.inference.MelodyVAE`
interface over a phrase latent ``w`` (see :mod:`melodyvae.phrase`).

A phrase of ``sections`` x the section model's bars (4 x 4 = 16 bars) is encoded section by
section with the section model (posterior means), and the phrase VAE's encoder maps those
codes to ``w``. Decoding maps ``w`` to the section codes and decodes all sections of all
phrases as one batch with the section model. ``MelodyVAE.load`` returns this class for a
phrase model file; everything the server and the command line use (``z_dim``, ``bars``,
``steps``, ``encode_tokens``, ``decode_tokens``, ``rolling``, ``negative_elbo_bits``,
``encode``, ``decode``, ``sample``, ``interpolate``) behaves as for any model, with ``w``
as the latent vector. The section layer (:meth:`PhraseMelodyVAE.codes`,
:meth:`~PhraseMelodyVAE.decode_codes`, :meth:`~PhraseMelodyVAE.replace_section`,
:meth:`~PhraseMelodyVAE.vary_section`) lets a musician set or vary one section while the
others keep their codes.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from melodyvae.checkpoint import PhraseCheckpoint, load_phrase_checkpoint
from melodyvae.decode import Cancel, Rolling
from melodyvae.errors import MelodyVAEError
from melodyvae.inference import LatentSizeError, MelodyVAE
from melodyvae.phrase import PhraseVAE


class SectionError(MelodyVAEError, ValueError):
    """A section index or section code that does not fit the phrase model."""


class PhraseMelodyVAE(MelodyVAE):
    """A phrase model ready to play: ``z`` is the phrase latent ``w``."""

    def __init__(self, ckpt: PhraseCheckpoint, name: str, device: torch.device) -> None:
        self.section = MelodyVAE(ckpt.section, {"model": ckpt.section_preset.model},
                                 f"{name}/section", device)
        self.phrase: PhraseVAE = ckpt.phrase
        super().__init__(ckpt.section, ckpt.info, name, device)
        self.sections = int(self.phrase.cfg.sections)

    @classmethod
    def load_file(cls, path: str | os.PathLike[str], name: str,
                  device: torch.device) -> PhraseMelodyVAE:
        return cls(load_phrase_checkpoint(path, device), name, device)

    # ---------------------------------------------------------------- properties
    @property
    def bars(self) -> int:
        return self.sections * self.section.bars

    @property
    def steps(self) -> int:
        return self.sections * self.section.steps

    @property
    def steps_per_bar(self) -> int:
        return self.section.steps_per_bar

    @property
    def z_dim(self) -> int:
        return int(self.phrase.cfg.latent_dim)

    @property
    def code_dim(self) -> int:
        """The section model's latent size (one section code)."""
        return self.section.z_dim

    # ---------------------------------------------------------------- section layer
    def _w(self, w: np.ndarray | torch.Tensor) -> torch.Tensor:
        wt = torch.as_tensor(np.asarray(w, dtype=np.float32), device=self.device)
        if wt.ndim == 1:
            wt = wt.unsqueeze(0)
        if wt.ndim != 2 or wt.shape[1] != self.z_dim:
            raise LatentSizeError(f"w has {wt.shape[-1]} dimensions, the model {self.z_dim}")
        return wt

    @torch.no_grad()
    def codes(self, w: np.ndarray | torch.Tensor) -> np.ndarray:
        """The section codes of phrase latents: (B, w_dim) or (w_dim,) -> (B, sections,
        code_dim) float32."""
        return self.phrase.decode_latent(self._w(w)).float().cpu().numpy()

    def encode_codes(self, tokens: np.ndarray) -> np.ndarray:
        """The section model's posterior means of each section: (B, T) tokens ->
        (B, sections, code_dim)."""
        tokens = np.asarray(tokens)
        n = len(tokens)
        flat = tokens.reshape(n * self.sections, self.section.steps)  # (B * sections, S)
        return self.section.encode_means(flat).reshape(n, self.sections, self.code_dim)

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.float32)
        if codes.ndim == 2:
            codes = codes[None]
        if codes.ndim != 3 or codes.shape[1:] != (self.sections, self.code_dim):
            raise SectionError(f"section codes must have shape (batch, {self.sections}, "
                               f"{self.code_dim}), not {codes.shape}")
        return codes

    def decode_codes(self, codes: np.ndarray, temperature: float = 0.0,
                     seed: int | None = None, cancel: Cancel | None = None) -> torch.Tensor:
        """(B, sections, code_dim) section codes -> (B, T) tokens: every section of every
        phrase decoded as one batch by the section model."""
        codes = self._check_codes(codes)
        n = len(codes)
        if temperature > 0:
            # one set of draws per phrase, the same for each of its sections: a section
            # whose code repeats an earlier one's is played again, as a repeat in a tune
            return torch.cat([self.section.decode_tokens(codes[:, s], temperature, seed, cancel)
                              for s in range(self.sections)], dim=1)  # (B, T)
        flat = codes.reshape(n * self.sections, self.code_dim)  # (B * sections, Z)
        tokens = self.section.decode_tokens(flat, temperature, seed, cancel)  # (B * sections, S)
        return tokens.reshape(n, self.steps)

    def _section_index(self, index: int) -> int:
        if not (isinstance(index, int | np.integer) and 0 <= index < self.sections):
            raise SectionError(f"section index must be 0 to {self.sections - 1}, not {index!r}")
        return int(index)

    def replace_section(self, w: np.ndarray, index: int, code: np.ndarray) -> np.ndarray:
        """The section codes of ``w`` (w_dim,) with section ``index`` set to ``code``
        (code_dim,), e.g. the section model's code of a melody (``self.section.encode``):
        (sections, code_dim). Decoded with :meth:`decode_codes`, the other sections keep
        their notes (greedy)."""
        index = self._section_index(index)
        code = np.asarray(code, dtype=np.float32)
        if code.shape != (self.code_dim,):
            raise SectionError(f"a section code has {self.code_dim} dimensions, not "
                               f"{code.shape}")
        codes = self.codes(w)[0]
        codes[index] = code
        return codes

    def vary_section(self, w: np.ndarray, index: int, amount: float, seed: int,
                     n: int = 1) -> np.ndarray:
        """``n`` variations of section ``index`` of ``w``: the section's code moved by
        ``amount`` x N(0, I) noise in the section model's code units (its codes' spread per
        dimension), the other sections unchanged: (n, sections, code_dim)."""
        index = self._section_index(index)
        codes = np.repeat(self.codes(w), n, axis=0)  # (n, sections, code_dim)
        return self.vary_codes(codes, index, amount, seed)

    def vary_codes(self, codes: np.ndarray, index: int, amount: float,
                   seed: int) -> np.ndarray:
        """Section codes (B, sections, code_dim) or (sections, code_dim) with section
        ``index`` of each moved by ``amount`` x N(0, I) noise in code spreads (as
        :meth:`vary_section`), the others unchanged; a new array of the same shape."""
        index = self._section_index(index)
        single = np.asarray(codes).ndim == 2
        out = self._check_codes(codes).copy()  # (B, sections, code_dim)
        rng = np.random.default_rng(seed)
        spread = self.phrase.code_std.float().cpu().numpy()
        out[:, index] += (amount * rng.standard_normal((len(out), self.code_dim)) * spread
                          ).astype(np.float32)
        return out[0] if single else out

    # ---------------------------------------------------------------- tokens layer
    @torch.no_grad()
    def encode_tokens(self, tokens: np.ndarray | torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        """(B, T) tokens -> the phrase posterior's mean and log-variance, each (B, w_dim);
        the sections enter as the section model's posterior means."""
        tokens = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens)
        codes = torch.as_tensor(self.encode_codes(tokens), device=self.device)
        return self.phrase.encode_latent(codes)

    @torch.no_grad()
    def decode_tokens(self, z: np.ndarray | torch.Tensor, temperature: float = 0.0,
                      seed: int | None = None, cancel: Cancel | None = None) -> torch.Tensor:
        """(B, w_dim) phrase latents -> (B, T) tokens (w -> section codes -> one batch of
        section decodes). The same seed gives the same tokens."""
        return self.decode_codes(self.codes(z), temperature, seed, cancel)

    def rolling(self) -> PhraseRolling | None:  # type: ignore[override]
        """A rolling decode of phrases (see :class:`PhraseRolling`), or None where the
        section model does not decode in NumPy."""
        inner = self.section.rolling()
        return None if inner is None else PhraseRolling(self, inner)

    @torch.no_grad()
    def negative_elbo_bits(self, tokens: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Negative ELBO of each phrase in bits: (N, T) tokens -> (N,).

        The section model's reconstruction NLL of every section, teacher-forced at the
        section codes the phrase decoder gives for the phrase posterior's mean, plus
        KL(q(w|codes) || N(0, I)), over ln 2. The section models' own KL terms are not
        counted: the sections' latents are the phrase decoder's deterministic output."""
        from melodyvae.model import kl_divergence, reconstruction_nll

        out = []
        for start in range(0, len(tokens), batch_size):
            chunk = np.asarray(tokens[start : start + batch_size])
            mu, logvar = self.encode_tokens(chunk)
            codes = self.phrase.decode_latent(mu).reshape(-1, self.code_dim)  # (B * sections, Z)
            x = torch.as_tensor(chunk.reshape(-1, self.section.steps), dtype=torch.long,
                                device=self.device)  # (B * sections, S)
            nll = reconstruction_nll(self.section.model.decoder(codes, x), x)
            nll = nll.view(len(chunk), self.sections).sum(1)  # (B,)
            bits = (nll + kl_divergence(mu, logvar)) / math.log(2.0)
            out.append(bits.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class PhraseRolling:
    """A :class:`melodyvae.decode.Rolling` decode of phrases: each phrase's sections join
    the section model's rolling batch together and the phrase comes back when all of them
    are done. Greedy phrases are the tokens :meth:`PhraseMelodyVAE.decode_tokens` gives;
    sampled ones are fixed by their generator (every section of a phrase draws the same
    numbers from it), not equal to a batch decode's. Same interface as ``Rolling``."""

    def __init__(self, vae: PhraseMelodyVAE, inner: Rolling) -> None:
        self.vae = vae
        self.inner = inner
        self._parts: dict[int, tuple[int, int]] = {}  # section key -> (phrase key, section)
        self._sections: dict[int, list[int]] = {}  # phrase key -> its section keys
        self._done: dict[int, dict[int, np.ndarray]] = {}  # phrase key -> finished sections
        self._next = 0

    def __len__(self) -> int:
        """Phrases being decoded."""
        return len(self._sections)

    @property
    def width(self) -> int:
        """Rows the next step computes."""
        return self.inner.width

    def add(self, phrases: list[tuple[int, np.ndarray, float, torch.Generator | None]]
            ) -> None:
        """Start decoding each (key, w (w_dim,), temperature, generator)."""
        if not phrases:
            return
        codes = self.vae.codes(np.stack([w for _, w, _, _ in phrases]))  # (P, sections, Z)
        n = self.vae.sections
        parts = []
        for (key, _, temperature, generator), phrase_codes in zip(phrases, codes, strict=True):
            self.drop(key)
            # one seed for every section of a phrase: they share their draws
            seed = (int(torch.randint(0, 2**62, (1,), generator=generator))
                    if temperature > 0 else None)
            keys = []
            for s in range(n):
                sub = self._next
                self._next += 1
                self._parts[sub] = (key, s)
                keys.append(sub)
                parts.append((sub, phrase_codes[s], temperature,
                              self.vae.section.generator(temperature, seed)))
            self._sections[key] = keys
            self._done[key] = {}
        self.inner.add(parts)

    def drop(self, key: int) -> None:
        """Stop decoding ``key`` (nothing if it is not being decoded)."""
        for sub in self._sections.pop(key, []):
            self.inner.drop(sub)
            del self._parts[sub]
        self._done.pop(key, None)

    def step(self) -> list[tuple[int, np.ndarray]]:
        """One step of every phrase; the phrases that completed: (key, tokens (T,))."""
        finished = []
        for sub, tokens in self.inner.step():
            key, s = self._parts.pop(sub)
            done = self._done[key]
            done[s] = tokens
            if len(done) == self.vae.sections:
                finished.append((key, np.concatenate([done[i] for i in range(len(done))])))
                del self._sections[key], self._done[key]
        return finished


def load_phrase_model(path: str | os.PathLike[str], name: str, device: torch.device
                      ) -> PhraseMelodyVAE:
    """A phrase model file as a facade (what ``MelodyVAE.load`` calls for one)."""
    return PhraseMelodyVAE.load_file(path, name, device)


__all__ = ["PhraseMelodyVAE", "PhraseRolling", "SectionError", "load_phrase_model"]

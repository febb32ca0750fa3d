"""The VAE at tiny size: shapes, gradients, the loss and the training schedules (decoding:
test_decode.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import random_tokens
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence

from melodyvae.melody import NOTE_OFFSET, VOCAB_SIZE
from melodyvae.model import VAE, vae_loss
from melodyvae.presets import PRESETS, TrainConfig, get_preset
from melodyvae.training.train import kl_weight, learning_rate, transpose_batch

TINY = ["tiny-hier-4bar", "tiny-hier-16bar", "tiny-flat-16bar"]


def tiny_model(name: str, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(get_preset(name).model).eval()


def test_tiny_presets_exist_for_every_kind() -> None:
    for name in TINY:
        assert name in PRESETS
    assert {PRESETS[n].model.kind for n in TINY} == {"hier", "flat"}


# ---------------------------------------------------------------------------- forward


@pytest.mark.parametrize("name", TINY)
def test_forward_shapes_and_finite_gradients(name: str) -> None:
    model = tiny_model(name).train()
    cfg = model.cfg
    x = torch.as_tensor(random_tokens(3, cfg.steps, seed=1))
    logits, mu, logvar = model(x)
    assert logits.shape == (3, cfg.steps, VOCAB_SIZE)
    assert mu.shape == logvar.shape == (3, cfg.z_dim)
    losses = vae_loss(logits, x, mu, logvar, beta=0.5, free_bits=0.0)
    losses["loss"].backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    # the loss reaches every part: encoder, decoder state init, decoder output
    assert model.encoder.rnn.weight_ih_l0.grad.abs().sum() > 0
    assert model.decoder.out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", TINY)
def test_forward_accepts_any_memory_layout(name: str) -> None:
    """A (B, T) batch is a (B, T) batch whatever its strides (a Fortran-ordered array, a
    transposed tensor): the result equals the contiguous one's."""
    model = tiny_model(name)
    tokens = random_tokens(3, model.cfg.steps, seed=4)
    contiguous = torch.as_tensor(tokens)
    strided = torch.as_tensor(np.asfortranarray(tokens))
    assert not strided.is_contiguous()
    with torch.no_grad():
        expected, _, _ = model(contiguous, sample_z=False)
        logits, _, _ = model(strided, sample_z=False)
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("name", TINY)
def test_encode_rejects_wrong_lengths(name: str) -> None:
    model = tiny_model(name)
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.zeros(2, model.cfg.steps + 1, dtype=torch.long))
    with pytest.raises(ValueError):
        model.encode(torch.zeros(model.cfg.steps, dtype=torch.long))


@pytest.mark.parametrize("name", TINY)
def test_batched_equals_one_by_one(name: str) -> None:
    model = tiny_model(name)
    x = torch.as_tensor(random_tokens(3, model.cfg.steps, seed=2))
    with torch.no_grad():
        logits, mu, _ = model(x, sample_z=False)
        for i in range(3):
            one, mu_one, _ = model(x[i : i + 1], sample_z=False)
            torch.testing.assert_close(one[0], logits[i], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(mu_one[0], mu[i], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- loss


def test_kl_below_the_free_bits_budget_costs_nothing() -> None:
    gen = torch.Generator().manual_seed(0)
    b, t, z = 4, 16, 8
    logits = torch.randn(b, t, VOCAB_SIZE, generator=gen, requires_grad=True)
    targets = torch.randint(0, VOCAB_SIZE, (b, t), generator=gen)
    mu = (0.3 * torch.randn(b, z, generator=gen)).requires_grad_()
    logvar = (0.1 * torch.randn(b, z, generator=gen)).requires_grad_()
    reference_kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1),
                                            reduction="sum") / b
    budget_bits = float(reference_kl.detach().max()) / math.log(2) + 1.0  # above every example's KL
    losses = vae_loss(logits, targets, mu, logvar, beta=0.7, free_bits=budget_bits)
    torch.testing.assert_close(losses["nll"], nll)
    torch.testing.assert_close(losses["kl"], reference_kl.mean())
    torch.testing.assert_close(losses["loss"], nll)  # no KL cost
    losses["loss"].backward()
    assert mu.grad is None or torch.all(mu.grad == 0)
    assert logvar.grad is None or torch.all(logvar.grad == 0)


def test_kl_above_the_budget_is_weighted_by_beta() -> None:
    gen = torch.Generator().manual_seed(1)
    b, t, z = 3, 8, 6
    logits = torch.randn(b, t, VOCAB_SIZE, generator=gen)
    targets = torch.randint(0, VOCAB_SIZE, (b, t), generator=gen)
    mu = 3.0 * torch.randn(b, z, generator=gen)
    logvar = torch.randn(b, z, generator=gen)
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    free_bits = 2.0
    free_nats = free_bits * math.log(2)
    assert bool((kl > free_nats).all())
    losses = vae_loss(logits, targets, mu, logvar, beta=0.25, free_bits=free_bits)
    expected = losses["nll"] + 0.25 * (kl - free_nats).mean()
    torch.testing.assert_close(losses["loss"], expected)
    # per example: an example under the budget adds nothing, one over it adds its excess
    mu2 = torch.cat([torch.zeros(1, z), mu[:1]])
    logvar2 = torch.cat([torch.zeros(1, z), logvar[:1]])
    two = vae_loss(logits[:2], targets[:2], mu2, logvar2, beta=1.0, free_bits=free_bits)
    torch.testing.assert_close(two["loss"] - two["nll"], (kl[0] - free_nats) / 2)


# ---------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_schedules_are_monotone_with_the_right_limits(name: str) -> None:
    cfg = get_preset(name).train
    steps = [0, 1, 2, 10, 100, 1000, 5000, 20000, 10**5, 10**6]
    lrs = [learning_rate(s, cfg) for s in steps]
    betas = [kl_weight(s, cfg) for s in steps]
    assert lrs[0] == pytest.approx(cfg.lr)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(cfg.lr_min)
    assert min(lrs) >= cfg.lr_min
    assert betas[0] == 0.0
    assert all(a <= b for a, b in zip(betas, betas[1:], strict=False))
    assert betas[-1] == pytest.approx(cfg.max_beta, rel=1e-6)
    assert max(betas) <= cfg.max_beta


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.floats(1e-5, 1e-2), st.floats(0.9, 0.99999),
       st.floats(0.0, 1.0), st.floats(0.9, 0.99999))
def test_schedule_properties(step: int, lr: float, decay: float, max_beta: float,
                             rate: float) -> None:
    cfg = TrainConfig(lr=lr, lr_min=lr / 100, lr_decay=decay, max_beta=max_beta, beta_rate=rate)
    assert cfg.lr_min <= learning_rate(step, cfg) <= cfg.lr
    assert learning_rate(step + 1, cfg) <= learning_rate(step, cfg)
    assert 0.0 <= kl_weight(step, cfg) <= max_beta
    assert kl_weight(step + 1, cfg) >= kl_weight(step, cfg)


# ---------------------------------------------------------------------------- transposition


@st.composite
def token_batches(draw) -> np.ndarray:
    n = draw(st.integers(1, 6))
    t = draw(st.integers(1, 32))
    values = st.one_of(st.sampled_from([0, 1]), st.integers(2, VOCAB_SIZE - 1),
                       st.sampled_from([2, VOCAB_SIZE - 1]))
    return np.asarray(draw(st.lists(values, min_size=n * t, max_size=n * t)),
                      dtype=np.int64).reshape(n, t)


@settings(max_examples=100, deadline=None)
@given(token_batches(), st.integers(0, 12), st.integers(0, 2**32 - 1))
def test_transpose_batch_property(tokens: np.ndarray, max_shift: int, seed: int) -> None:
    before = tokens.copy()
    out = transpose_batch(tokens, max_shift, np.random.default_rng(seed))
    np.testing.assert_array_equal(tokens, before)  # the input is left alone
    assert out.shape == tokens.shape
    assert out.min() >= 0 and out.max() < VOCAB_SIZE
    notes = tokens >= 2
    np.testing.assert_array_equal(out[~notes], tokens[~notes])  # hold and rest stay
    assert np.all(out[notes] >= 2)  # notes stay notes
    for row_in, row_out in zip(tokens, out, strict=True):
        shifts = np.unique(row_out[row_in >= 2] - row_in[row_in >= 2])
        assert len(shifts) <= 1  # one shift per phrase
        if len(shifts):
            assert abs(int(shifts[0])) <= max_shift


def test_transpose_batch_uses_the_whole_range() -> None:
    tokens = np.full((400, 4), 60 + NOTE_OFFSET, dtype=np.int64)
    tokens[:, 1] = 1
    out = transpose_batch(tokens, 5, np.random.default_rng(0))
    assert set((out[:, 0] - tokens[:, 0]).tolist()) == set(range(-5, 6))
    edge = np.array([[2, 0, VOCAB_SIZE - 1, 1]])  # lowest and highest note: no room
    np.testing.assert_array_equal(transpose_batch(edge, 5, np.random.default_rng(0)), edge)
    assert transpose_batch(tokens, 0, np.random.default_rng(0)) is tokens

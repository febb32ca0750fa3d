"""The VAE at tiny size: shapes, gradients, decode equivalences, the loss and the training
schedules."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import random_tokens
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence

from melodyvae import model as model_module
from melodyvae.melody import NOTE_OFFSET, VOCAB_SIZE
from melodyvae.model import VAE, vae_loss
from melodyvae.presets import PRESETS, TrainConfig, get_preset
from melodyvae.training.train import kl_weight, learning_rate, transpose_batch

TINY = ["tiny-hier-4bar", "tiny-hier-16bar", "tiny-flat-16bar"]
TINY_HIER = ["tiny-hier-4bar", "tiny-hier-16bar"]


@pytest.fixture(params=["numpy", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Decode on the CPU with melodyvae.cpu_decode (numpy) or the PyTorch stepper."""
    monkeypatch.setattr(model_module, "NUMPY_ON_CPU", request.param == "numpy")
    return str(request.param)


def tiny_model(name: str, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(get_preset(name).model).eval()


def opinionated_model(name: str, seed: int = 0) -> VAE:
    """A tiny model whose weights are scaled up so that greedy decoding varies from step to
    step (an untrained model at its initial scale often repeats one token)."""
    model = tiny_model(name, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


def assert_varied(tokens: torch.Tensor) -> None:
    """Guard against equivalence tests passing on a constant output."""
    for row in tokens:
        assert len(torch.unique(row)) >= 4, "decoded tokens too uniform for a real check"


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
def test_batched_equals_one_by_one(name: str, backend: str) -> None:
    model = tiny_model(name)
    x = torch.as_tensor(random_tokens(3, model.cfg.steps, seed=2))
    with torch.no_grad():
        logits, mu, _ = model(x, sample_z=False)
        for i in range(3):
            one, mu_one, _ = model(x[i : i + 1], sample_z=False)
            torch.testing.assert_close(one[0], logits[i], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(mu_one[0], mu[i], atol=1e-5, rtol=1e-4)
        z = torch.randn(3, model.cfg.z_dim, generator=torch.Generator().manual_seed(3))
        batch = model.sample(z)
        for i in range(3):
            assert torch.equal(model.sample(z[i : i + 1])[0], batch[i])


# ---------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("name", TINY_HIER)
@pytest.mark.parametrize("batch", [1, 3])
def test_parallel_equals_sequential_bar_decode(name: str, batch: int, backend: str) -> None:
    model = opinionated_model(name, seed=batch)
    z = torch.randn(batch, model.cfg.z_dim, generator=torch.Generator().manual_seed(7)) * 2
    parallel = model.sample(z, temperature=0.0, parallel=True)
    sequential = model.sample(z, temperature=0.0, parallel=False)
    assert parallel.shape == (batch, model.cfg.steps)
    assert parallel.dtype == torch.long
    assert_varied(parallel)
    assert torch.equal(parallel, sequential)


@pytest.mark.parametrize("name", TINY)
def test_seeded_sampling_is_reproducible(name: str, backend: str) -> None:
    model = tiny_model(name)
    z = torch.randn(3, model.cfg.z_dim, generator=torch.Generator().manual_seed(1))

    def draw(seed: int) -> torch.Tensor:
        return model.sample(z, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    first = draw(5)
    assert torch.equal(first, draw(5))
    assert first.min() >= 0 and first.max() < VOCAB_SIZE
    others = [draw(s) for s in (6, 7, 8)]
    assert sum(not torch.equal(first, o) for o in others) >= 2


@pytest.mark.parametrize("name", TINY)
def test_greedy_decode_agrees_with_teacher_forcing(name: str, backend: str) -> None:
    """Free-running greedy decode and the teacher-forced nn.LSTM path are the same
    computation: fed the greedy tokens, teacher forcing predicts exactly them."""
    model = opinionated_model(name, seed=11).double()
    z = torch.randn(4, model.cfg.z_dim, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64) * 2
    greedy = model.sample(z, temperature=0.0)
    assert_varied(greedy)
    with torch.no_grad():
        logits = model.decoder(z, greedy)  # (B, T, V)
    assert torch.equal(logits.argmax(-1), greedy)


@pytest.mark.parametrize("name", TINY)
def test_greedy_decode_agrees_with_teacher_forcing_float32(name: str, backend: str) -> None:
    model = opinionated_model(name, seed=12)
    z = torch.randn(4, model.cfg.z_dim, generator=torch.Generator().manual_seed(4)) * 2
    greedy = model.sample(z, temperature=0.0)
    assert_varied(greedy)
    with torch.no_grad():
        logits = model.decoder(z, greedy)
    agree = (logits.argmax(-1) == greedy).float().mean()
    assert agree > 0.99  # only float32 near-ties may differ


@pytest.mark.parametrize("name", TINY)
def test_sampling_follows_weight_updates(name: str, backend: str) -> None:
    """Decoding after an optimizer step uses the new weights (no stale decode cache)."""
    model = opinionated_model(name, seed=3)
    z = torch.randn(3, model.cfg.z_dim, generator=torch.Generator().manual_seed(9)) * 2
    before = model.sample(z)  # builds any cache
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.as_tensor(random_tokens(4, model.cfg.steps, seed=5))
    logits, mu, logvar = model(x)
    vae_loss(logits, x, mu, logvar, 1.0, 0.0)["loss"].backward()
    optimizer.step()
    fresh = VAE(model.cfg).eval()
    fresh.load_state_dict(model.state_dict())
    after = model.sample(z)
    assert torch.equal(after, fresh.sample(z))
    assert not torch.equal(after, before)  # the step changed what the model decodes
    other = opinionated_model(name, seed=4)
    model.load_state_dict(other.state_dict())
    assert torch.equal(model.sample(z), other.sample(z))


@pytest.mark.parametrize("name", TINY)
def test_a_model_that_has_decoded_can_be_deep_copied(name: str, backend: str) -> None:
    """Whatever a decode caches on the model must not break copy.deepcopy (EMA weights,
    a copy per worker, ...)."""
    model = opinionated_model(name, seed=5)
    z = torch.randn(2, model.cfg.z_dim, generator=torch.Generator().manual_seed(0)) * 2
    tokens = model.sample(z)
    twin = copy.deepcopy(model)
    assert torch.equal(twin.sample(z), tokens)
    with torch.no_grad():  # the copy is independent of the original
        for p in twin.parameters():
            p.mul_(-1.0)
    assert torch.equal(model.sample(z), tokens)


@pytest.mark.parametrize("name", TINY)
def test_decode_macs_positive(name: str) -> None:
    assert tiny_model(name).decode_macs() > 0


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


def test_cancel_stops_a_decode_between_steps(backend: str) -> None:
    from melodyvae.model import DecodeCancelled

    torch.manual_seed(0)
    model = VAE(get_preset("tiny-hier-4bar").model).eval()
    z = torch.randn(2, model.cfg.z_dim)
    asked = []

    def after_five() -> bool:
        asked.append(1)
        return len(asked) > 5

    with pytest.raises(DecodeCancelled):
        model.sample(z, cancel=after_five)
    assert len(asked) == 6
    assert torch.equal(model.sample(z, cancel=lambda: False), model.sample(z))
    asked.clear()
    model.sample(z, cancel=lambda: bool(asked.append(1)))
    # asked before every conductor step as well as every bar step: a stale decode stops
    # within a step even while the conductor runs
    assert len(asked) == model.cfg.bars + model.cfg.steps_per_bar


@pytest.mark.parametrize("name", TINY)
def test_numpy_and_torch_decodes_agree(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """cpu_decode is the PyTorch stepper's arithmetic: in float64 greedy decodes are equal,
    and a seeded draw takes the same uniforms in the same order."""
    model = opinionated_model(name, seed=21).double()
    z = torch.randn(3, model.cfg.z_dim, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64) * 2
    out = {}
    for numpy in (True, False):
        monkeypatch.setattr(model_module, "NUMPY_ON_CPU", numpy)
        out[numpy] = (model.sample(z),
                      model.sample(z, 1.0, torch.Generator().manual_seed(8)))
    assert_varied(out[True][0])
    assert torch.equal(out[True][0], out[False][0])
    assert torch.equal(out[True][1], out[False][1])


@pytest.mark.parametrize("name", TINY_HIER)
def test_numpy_sampling_is_the_same_bar_by_bar(name: str) -> None:
    """Each bar row takes its own uniforms, so sampling in parallel or bar after bar draws
    the same melody."""
    model = opinionated_model(name, seed=2)
    z = torch.randn(2, model.cfg.z_dim, generator=torch.Generator().manual_seed(6)) * 2
    parallel = model.sample(z, 1.0, torch.Generator().manual_seed(4), parallel=True)
    sequential = model.sample(z, 1.0, torch.Generator().manual_seed(4), parallel=False)
    assert torch.equal(parallel, sequential)


def test_a_large_batch_decodes_as_its_rows_do_one_by_one() -> None:
    """Past cpu_decode.MAX_ROWS the PyTorch stepper takes over; the melodies stay the same."""
    from melodyvae import cpu_decode

    model = opinionated_model("tiny-hier-16bar", seed=8).double()
    batch = cpu_decode.MAX_ROWS // model.cfg.bars + 2
    z = torch.randn(batch, model.cfg.z_dim, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64) * 2
    together = model.sample(z)
    assert_varied(together)
    for i in range(batch):
        assert torch.equal(model.sample(z[i : i + 1])[0], together[i])


_ROLLING_MODELS: dict[str, VAE] = {}


@pytest.mark.parametrize("name", TINY)
@settings(max_examples=20, deadline=None)
@given(schedule=st.lists(st.tuples(st.integers(0, 20), st.sampled_from([0.0, 0.7, 1.5]),
                                   st.booleans()), min_size=1, max_size=6))
def test_a_rolling_decode_gives_each_phrase_its_decode_alone(
        name: str, schedule: list[tuple[int, float, bool]]) -> None:
    """Phrases join a running batch after any number of steps, some leave it early; each
    that completes has the tokens of its z decoded alone with its own generator."""
    from melodyvae.cpu_decode import numpy_context

    model = _ROLLING_MODELS.setdefault(name, opinionated_model(name, seed=9))
    rolling = model_module.rolling_decoder(model.decoder)
    assert rolling is not None
    zs = torch.randn(len(schedule), model.cfg.z_dim,
                     generator=torch.Generator().manual_seed(len(schedule))) * 2
    done: dict[int, np.ndarray] = {}
    with numpy_context():
        for i, (wait, temperature, _) in enumerate(schedule):
            for _ in range(wait):
                done.update(rolling.step())
            rolling.add([(i, zs[i].numpy(), temperature,
                          torch.Generator().manual_seed(i) if temperature > 0 else None)])
            if i > 0 and schedule[i - 1][2]:  # the one before leaves, finished or not
                rolling.drop(i - 1)
                done.pop(i - 1, None)
        if schedule[-1][2]:
            rolling.drop(len(schedule) - 1)
        while len(rolling):
            done.update(rolling.step())
    kept = {i for i, (_, _, dropped) in enumerate(schedule) if not dropped}
    assert set(done) == kept
    for i in kept:
        temperature = schedule[i][1]
        alone = model.decoder.sample(zs[i : i + 1], temperature,
                                     torch.Generator().manual_seed(i))
        assert_varied(alone)
        np.testing.assert_array_equal(done[i], alone[0].numpy())
    assert rolling.rows is None


def test_the_rolling_decoder_is_there_only_where_decodes_run_in_numpy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("tiny-hier-4bar")
    assert model_module.rolling_decoder(model.decoder) is not None
    monkeypatch.setattr(model_module, "NUMPY_ON_CPU", False)
    assert model_module.rolling_decoder(model.decoder) is None

"""Free-running decoding (melodyvae.decode) against the model's teacher-forced nn.LSTM path,
backend against backend, batch against one by one, rolling against alone.

The tiny presets step two-layer conductors and decoders, as the shipped 16-bar models do;
``:1-layer`` variants cover hier-4bar's one-layer bar decoder."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
import torch
from conftest import random_tokens
from hypothesis import given, settings
from hypothesis import strategies as st

from melodyvae import decode
from melodyvae.melody import VOCAB_SIZE
from melodyvae.model import VAE, vae_loss
from melodyvae.presets import get_preset

TINY = ["tiny-hier-4bar", "tiny-hier-16bar", "tiny-flat-16bar", "tiny-hier-4bar:1-layer",
        "tiny-flat-16bar:1-layer"]
TINY_HIER = ["tiny-hier-4bar", "tiny-hier-16bar", "tiny-hier-4bar:1-layer"]

Sample = Callable[..., torch.Tensor]


@pytest.fixture(params=["numpy", "torch"])
def sample(request: pytest.FixtureRequest) -> Sample:
    """melodyvae.decode.sample on one backend."""
    return partial(decode.sample, backend=request.param)


def tiny_model(name: str, seed: int = 0) -> VAE:
    """A tiny preset's model; ``NAME:1-layer`` with one-layer conductor and decoder."""
    preset, _, variant = name.partition(":")
    cfg = get_preset(preset).model
    if variant == "1-layer":
        cfg = dataclasses.replace(cfg, cond_layers=1, dec_layers=1)
    torch.manual_seed(seed)
    return VAE(cfg).eval()


def opinionated_model(name: str, seed: int = 0) -> VAE:
    """A tiny model whose weights are scaled up so that greedy decoding varies from step to
    step (an untrained model at its initial scale often repeats one token; the token
    embeddings and recurrent weights most, so that each step depends on the last)."""
    model = tiny_model(name, seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.mul_(6.0 if pname.startswith("decoder.embed") or "weight_hh" in pname else 3.0)
    return model


def assert_varied(tokens: torch.Tensor) -> None:
    """Guard against equivalence tests passing on a constant output."""
    for row in tokens:
        assert len(torch.unique(row)) >= 3, "decoded tokens too uniform for a real check"


def test_the_tiny_presets_have_two_layers_where_the_decode_steps() -> None:
    for name in ("tiny-hier-4bar", "tiny-hier-16bar", "tiny-flat-16bar"):
        cfg = get_preset(name).model
        assert cfg.dec_layers == 2
        assert cfg.cond_layers == 2 or cfg.kind == "flat"


@pytest.mark.parametrize("name", TINY)
def test_batched_equals_one_by_one(name: str, sample: Sample) -> None:
    model = opinionated_model(name, seed=1)
    z = torch.randn(3, model.cfg.z_dim, generator=torch.Generator().manual_seed(3)) * 2
    batch = sample(model, z)
    assert_varied(batch)
    for i in range(3):
        assert torch.equal(sample(model, z[i : i + 1])[0], batch[i])


@pytest.mark.parametrize("name", TINY_HIER)
@pytest.mark.parametrize("batch", [1, 3])
def test_parallel_equals_sequential_bar_decode(name: str, batch: int, sample: Sample) -> None:
    model = opinionated_model(name, seed=batch)
    z = torch.randn(batch, model.cfg.z_dim, generator=torch.Generator().manual_seed(7)) * 2
    parallel = sample(model, z, temperature=0.0, parallel=True)
    sequential = sample(model, z, temperature=0.0, parallel=False)
    assert parallel.shape == (batch, model.cfg.steps)
    assert parallel.dtype == torch.long
    assert_varied(parallel)
    assert torch.equal(parallel, sequential)


@pytest.mark.parametrize("name", TINY)
def test_seeded_sampling_is_reproducible(name: str, sample: Sample) -> None:
    model = tiny_model(name)
    z = torch.randn(3, model.cfg.z_dim, generator=torch.Generator().manual_seed(1))

    def draw(seed: int) -> torch.Tensor:
        return sample(model, z, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    first = draw(5)
    assert torch.equal(first, draw(5))
    assert first.min() >= 0 and first.max() < VOCAB_SIZE
    others = [draw(s) for s in (6, 7, 8)]
    assert sum(not torch.equal(first, o) for o in others) >= 2


@pytest.mark.parametrize("name", TINY)
def test_greedy_decode_agrees_with_teacher_forcing(name: str, sample: Sample) -> None:
    """Free-running greedy decode and the teacher-forced nn.LSTM path are the same
    computation: fed the greedy tokens, teacher forcing predicts exactly them."""
    model = opinionated_model(name, seed=15).double()
    z = torch.randn(4, model.cfg.z_dim, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64) * 2
    greedy = sample(model, z, temperature=0.0)
    assert_varied(greedy)
    with torch.no_grad():
        logits = model.decoder(z, greedy)  # (B, T, V)
    assert torch.equal(logits.argmax(-1), greedy)


@pytest.mark.parametrize("name", TINY)
def test_greedy_decode_agrees_with_teacher_forcing_float32(name: str, sample: Sample) -> None:
    model = opinionated_model(name, seed=12)
    z = torch.randn(4, model.cfg.z_dim, generator=torch.Generator().manual_seed(4)) * 2
    greedy = sample(model, z, temperature=0.0)
    assert_varied(greedy)
    with torch.no_grad():
        logits = model.decoder(z, greedy)
    agree = (logits.argmax(-1) == greedy).float().mean()
    assert agree > 0.99  # only float32 near-ties may differ


@pytest.mark.parametrize("name", TINY)
def test_sampling_follows_weight_updates(name: str, sample: Sample) -> None:
    """Decoding after an optimizer step uses the new weights (no stale decode cache)."""
    model = opinionated_model(name, seed=3)
    z = torch.randn(3, model.cfg.z_dim, generator=torch.Generator().manual_seed(9)) * 2
    before = sample(model, z)  # builds any cache
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.as_tensor(random_tokens(4, model.cfg.steps, seed=5))
    logits, mu, logvar = model(x)
    vae_loss(logits, x, mu, logvar, 1.0, 0.0)["loss"].backward()
    optimizer.step()
    fresh = VAE(model.cfg).eval()
    fresh.load_state_dict(model.state_dict())
    after = sample(model, z)
    assert torch.equal(after, sample(fresh, z))
    assert not torch.equal(after, before)  # the step changed what the model decodes
    other = opinionated_model(name, seed=4)
    model.load_state_dict(other.state_dict())
    assert torch.equal(sample(model, z), sample(other, z))


@pytest.mark.parametrize("name", TINY)
def test_a_model_that_has_decoded_can_be_deep_copied(name: str, sample: Sample) -> None:
    """Whatever a decode caches on the model must not break copy.deepcopy (EMA weights,
    a copy per worker, ...)."""
    model = opinionated_model(name, seed=5)
    z = torch.randn(2, model.cfg.z_dim, generator=torch.Generator().manual_seed(0)) * 2
    tokens = sample(model, z)
    twin = copy.deepcopy(model)
    assert torch.equal(sample(twin, z), tokens)
    with torch.no_grad():  # the copy is independent of the original
        for p in twin.parameters():
            p.mul_(-1.0)
    assert torch.equal(sample(model, z), tokens)


def test_cancel_stops_a_decode_between_steps(sample: Sample) -> None:
    model = tiny_model("tiny-hier-4bar")
    z = torch.randn(2, model.cfg.z_dim)
    asked = []

    def after_five() -> bool:
        asked.append(1)
        return len(asked) > 5

    with pytest.raises(decode.DecodeCancelled):
        sample(model, z, cancel=after_five)
    assert len(asked) == 6
    assert torch.equal(sample(model, z, cancel=lambda: False), sample(model, z))
    asked.clear()
    sample(model, z, cancel=lambda: bool(asked.append(1)))
    # asked before every conductor step as well as every bar step: a stale decode stops
    # within a step even while the conductor runs
    assert len(asked) == model.cfg.bars + model.cfg.steps_per_bar


@pytest.mark.parametrize("name", TINY)
def test_numpy_torch_and_teacher_forcing_agree(name: str) -> None:
    """The NumPy backend is the PyTorch stepper's arithmetic, and both are nn.LSTM's: in
    float64 greedy decodes are equal and teacher forcing on them predicts exactly them, and
    a seeded draw takes the same uniforms in the same order."""
    model = opinionated_model(name, seed=21).double()
    z = torch.randn(3, model.cfg.z_dim, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64) * 2
    out = {}
    for backend in ("numpy", "torch"):
        out[backend] = (decode.sample(model, z, backend=backend),
                        decode.sample(model, z, 1.0, torch.Generator().manual_seed(8),
                                      backend=backend))
    greedy = out["numpy"][0]
    assert_varied(greedy)
    assert torch.equal(greedy, out["torch"][0])
    assert torch.equal(out["numpy"][1], out["torch"][1])
    assert not torch.equal(out["numpy"][1], greedy)
    with torch.no_grad():
        assert torch.equal(model.decoder(z, greedy).argmax(-1), greedy)


@pytest.mark.parametrize("name", TINY_HIER)
def test_numpy_sampling_is_the_same_bar_by_bar(name: str) -> None:
    """Each bar row takes its own uniforms, so sampling in parallel or bar after bar draws
    the same melody."""
    model = opinionated_model(name, seed=2)
    z = torch.randn(2, model.cfg.z_dim, generator=torch.Generator().manual_seed(6)) * 2
    parallel = decode.sample(model, z, 1.0, torch.Generator().manual_seed(4), parallel=True,
                             backend="numpy")
    sequential = decode.sample(model, z, 1.0, torch.Generator().manual_seed(4),
                               parallel=False, backend="numpy")
    assert_varied(parallel)
    assert torch.equal(parallel, sequential)


def test_a_large_batch_decodes_as_its_rows_do_one_by_one() -> None:
    """Past decode.MAX_ROWS the PyTorch stepper takes over; the melodies stay the same."""
    model = opinionated_model("tiny-hier-16bar", seed=8).double()
    batch = decode.MAX_ROWS // model.cfg.bars + 2
    z = torch.randn(batch, model.cfg.z_dim, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64) * 2
    together = decode.sample(model, z)
    assert_varied(together)
    for i in range(batch):
        assert torch.equal(decode.sample(model, z[i : i + 1])[0], together[i])


_ROLLING_MODELS: dict[str, VAE] = {}


@pytest.mark.parametrize("name", TINY)
@settings(max_examples=20, deadline=None)
@given(schedule=st.lists(st.tuples(st.integers(0, 20), st.sampled_from([0.0, 0.7, 1.5]),
                                   st.booleans()), min_size=1, max_size=6))
def test_a_rolling_decode_gives_each_phrase_its_decode_alone(
        name: str, schedule: list[tuple[int, float, bool]]) -> None:
    """Phrases join a running batch after any number of steps, some leave it early; each
    that completes has the tokens of its z decoded alone with its own generator."""
    model = _ROLLING_MODELS.setdefault(name, opinionated_model(name, seed=9))
    rolling = decode.rolling(model)
    assert rolling is not None
    zs = torch.randn(len(schedule), model.cfg.z_dim,
                     generator=torch.Generator().manual_seed(len(schedule))) * 2
    done: dict[int, np.ndarray] = {}
    with decode.numpy_context():
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
        alone = decode.sample(model, zs[i : i + 1], temperature,
                              torch.Generator().manual_seed(i))
        assert_varied(alone)
        np.testing.assert_array_equal(done[i], alone[0].numpy())
    assert rolling.rows is None


def test_the_rolling_decoder_is_there_only_where_the_weights_are_numpys_to_use() -> None:
    model = tiny_model("tiny-hier-4bar")
    assert decode.rolling(model) is not None
    assert decode.rolling(model.double()) is not None
    assert decode.rolling(model.half()) is None


def test_auto_takes_numpy_for_small_cpu_decodes_of_the_models_float_type() -> None:
    model = tiny_model("tiny-hier-16bar")
    one = torch.zeros(1, model.cfg.z_dim)
    most = torch.zeros(decode.MAX_ROWS // model.cfg.bars, model.cfg.z_dim)
    assert decode.choose_backend(model, one) == "numpy"
    assert decode.choose_backend(model, most) == "numpy"
    assert decode.choose_backend(model, torch.zeros(len(most) + 1, model.cfg.z_dim)) == "torch"
    assert decode.choose_backend(model, one.double()) == "torch"  # not the model's type
    assert decode.choose_backend(model, most, "torch") == "torch"
    assert decode.choose_backend(model.half(), one.half()) == "torch"
    flat = tiny_model("tiny-flat-16bar")  # one row per phrase
    assert decode.choose_backend(flat, torch.zeros(decode.MAX_ROWS, flat.cfg.z_dim)) == "numpy"

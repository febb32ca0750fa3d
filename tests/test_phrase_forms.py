"""The form coordinate of phrase models: which sections repeat which, read from section codes,
carried by one standard-normal latent coordinate, and played as repeated notes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_phrase_checkpoint, random_tokens
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from melodyvae.checkpoint import METADATA_KEY, CheckpointError, load_phrase_checkpoint
from melodyvae.inference import MelodyVAE
from melodyvae.phrase import PhraseConfig, PhraseVAE, form_name, forms_of
from melodyvae.phrase_inference import PhraseMelodyVAE
from melodyvae.training.corpus import CORPUS_FORMAT_VERSION, Corpus
from melodyvae.training.evaluate import evaluate_model
from melodyvae.training.report import build_report


def test_forms_of_four_sections() -> None:
    forms = forms_of(4)
    assert len(forms) == 15 == len(set(forms))  # Bell number B4
    assert form_name(forms[0]) == "ABCD" and form_name(forms[-1]) == "AAAA"
    assert {"AABA", "ABAC", "ABCB", "ABAB"} <= {form_name(f) for f in forms}
    for form in forms:  # labels in order of first appearance
        assert form[0] == 0
        assert all(form[i] <= max(form[:i]) + 1 for i in range(1, 4))


@pytest.fixture
def phrase() -> PhraseVAE:
    torch.manual_seed(0)
    model = PhraseVAE(PhraseConfig(code_dim=6, w_dim=4, hidden=8, layers=1, forms=1)).eval()
    return model


def codes_of(form: str, seed: int = 0) -> torch.Tensor:
    """Section codes (1, 4, 6) far apart per label, equal within one."""
    rng = np.random.default_rng(seed)
    base = {label: rng.standard_normal(6) * 3 for label in set(form)}
    return torch.tensor(np.stack([base[label] for label in form]), dtype=torch.float32)[None]


@pytest.mark.parametrize("form", ["ABCD", "ABAC", "AABA", "ABCB", "AAAA", "ABBA"])
def test_form_read_from_codes(phrase: PhraseVAE, form: str) -> None:
    index = int(phrase.form_index(codes_of(form))[0])
    assert form_name(forms_of(4)[index]) == form


def test_near_codes_repeat_far_ones_do_not(phrase: PhraseVAE) -> None:
    codes = codes_of("ABCD")
    near = codes.clone()
    near[0, 2] = near[0, 0] + 0.1  # standardised RMS distance 0.1 < threshold 0.35
    assert form_name(forms_of(4)[int(phrase.form_index(near)[0])]) == "ABAC"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=15, max_size=15).filter(lambda p: sum(p) > 0.1),
       st.integers(0, 14))
def test_form_coordinate_round_trip(weights: list[float], index: int) -> None:
    """Every form of non-zero frequency comes back from the coordinate its encoding gives."""
    torch.manual_seed(0)
    model = PhraseVAE(PhraseConfig(code_dim=6, w_dim=4, hidden=8, layers=1, forms=1))
    prior = torch.tensor(weights) + 1e-3
    model.form_prior.copy_(prior / prior.sum())
    u, logvar = model.u_of_form(torch.tensor([index]))
    assert torch.isfinite(u).all() and torch.isfinite(logvar).all()
    assert int(model.form_from_u(u)[0]) == index


def test_form_prior_from_codes(phrase: PhraseVAE) -> None:
    codes = torch.cat([codes_of("ABAC", 1)] * 3 + [codes_of("ABCD", 2)])
    phrase.set_forms(codes, 0.35, smoothing=0.0)
    names = [form_name(f) for f in forms_of(4)]
    assert phrase.form_prior[names.index("ABAC")] == pytest.approx(0.75)
    assert phrase.form_prior[names.index("ABCD")] == pytest.approx(0.25)
    # the standard normal's mass is spread as the prior says
    u = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    share = (phrase.form_from_u(u) == names.index("ABAC")).float().mean()
    assert float(share) == pytest.approx(0.75, abs=0.02)


def test_apply_form_copies_codes(phrase: PhraseVAE) -> None:
    codes = torch.randn(2, 4, 6)
    names = [form_name(f) for f in forms_of(4)]
    out = phrase.apply_form(codes, torch.tensor([names.index("AABA"), names.index("ABCB")]))
    assert torch.equal(out[0, 1], codes[0, 0]) and torch.equal(out[0, 3], codes[0, 0])
    assert torch.equal(out[0, 2], codes[0, 2])
    assert torch.equal(out[1, 3], codes[1, 1]) and torch.equal(out[1, :3], codes[1, :3])


@pytest.fixture(scope="module")
def form_model(tmp_path_factory: pytest.TempPathFactory) -> PhraseMelodyVAE:
    path = make_phrase_checkpoint(tmp_path_factory.mktemp("forms") / "f.safetensors", forms=1)
    vae = MelodyVAE.load(path, device="cpu")
    assert isinstance(vae, PhraseMelodyVAE)
    return vae


def z_with_form(vae: PhraseMelodyVAE, form: str, n: int = 4) -> np.ndarray:
    names = [form_name(f) for f in forms_of(4)]
    u, _ = vae.phrase.u_of_form(torch.tensor([names.index(form)] * n))
    z = vae.sample_z(n, seed=3)
    z[:, -1] = u.numpy()
    return z


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_repeats_in_the_form_are_repeats_in_the_notes(form_model: PhraseMelodyVAE,
                                                      temperature: float) -> None:
    vae = form_model
    assert vae.z_dim == vae.phrase.cfg.w_dim + 1
    tokens = vae.decode_tokens(z_with_form(vae, "ABAB"), temperature, seed=5).numpy()
    sections = tokens.reshape(len(tokens), 4, -1)
    assert (sections[:, 0] == sections[:, 2]).all() and (sections[:, 1] == sections[:, 3]).all()
    assert (sections[:, 0] != sections[:, 1]).any()  # A and B differ
    plain = vae.decode_tokens(z_with_form(vae, "ABCD"), temperature, seed=5).numpy()
    assert (plain.reshape(len(plain), 4, -1)[:, 0] != plain.reshape(len(plain), 4, -1)[:, 2]
            ).any(axis=1).all()


def test_rolling_plays_the_form(form_model: PhraseMelodyVAE) -> None:
    vae = form_model
    rolling = vae.rolling()
    assert rolling is not None
    z = z_with_form(vae, "AABA", 2)
    rolling.add([(k, z[k], 1.0, torch.Generator().manual_seed(k)) for k in range(2)])
    done: dict[int, np.ndarray] = {}
    while len(done) < 2:
        done.update(rolling.step())
    for tokens in done.values():
        s = tokens.reshape(4, -1)
        assert (s[0] == s[1]).all() and (s[0] == s[3]).all()


def test_encoding_keeps_the_form(form_model: PhraseMelodyVAE) -> None:
    vae = form_model
    tokens = vae.decode_tokens(z_with_form(vae, "ABAC", 3), 1.0, seed=9).numpy()
    mu, _ = vae.encode_tokens(tokens)
    again = vae.decode_tokens(mu, 0.0).numpy().reshape(3, 4, -1)
    assert (again[:, 0] == again[:, 2]).all()


def test_checkpoint_refuses_a_bad_form_prior(tmp_path: Path) -> None:
    path = make_phrase_checkpoint(tmp_path / "f.safetensors", forms=1)
    tensors = load_file(str(path))
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    tensors["phrase.form_prior"] = tensors["phrase.form_prior"] * 3
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="form prior"):
        load_phrase_checkpoint(tmp_path / "bad.safetensors")
    assert METADATA_KEY in meta


@pytest.fixture(scope="module")
def corpus16() -> Corpus:
    n = 30
    rng = np.random.default_rng(4)
    sections = random_tokens(3 * n, 64, seed=6).reshape(n, 3, 64)
    tokens = sections[:, [0, 1, 0, 2]].reshape(n, 256).astype(np.uint8)  # ABAC phrases
    rng.shuffle(tokens)
    split = np.repeat(np.array([0, 1, 2], dtype=np.uint8), n // 3)
    meta = {"format_version": CORPUS_FORMAT_VERSION, "bars": 16, "steps_per_bar": 16,
            "hop_bars": 2, "source": "test", "tunes": [str(i) for i in range(n)]}
    return Corpus(tokens, np.arange(n, dtype=np.int32), split, meta)


def test_phrase_model_evaluated_as_it_plays(form_model: PhraseMelodyVAE,
                                            corpus16: Corpus) -> None:
    test = corpus16.subset("test")
    metrics = evaluate_model(form_model, test)
    mu, _ = form_model.encode_tokens(test)
    greedy = form_model.decode_tokens(mu, 0.0).numpy()
    assert metrics["sampled_accuracy"] == pytest.approx(float((greedy == test).mean()))
    assert metrics["steps_per_phrase"] == 256 and metrics["n_phrases"] == len(test)
    assert 0.0 <= metrics["teacher_forced_accuracy"] <= 1.0 and metrics["kl_nats"] >= 0.0


def test_card_of_a_phrase_model_holds_the_16_bar_goals(tmp_path: Path,
                                                       form_model: PhraseMelodyVAE,
                                                       corpus16: Corpus) -> None:
    report = build_report(form_model, corpus16, tmp_path / "card", n_samples=10,
                          music_samples=10)
    card = (tmp_path / "card" / "card.md").read_text()
    assert "Goals (those set for a 16-bar model):" in card
    f1 = report["music"]["reconstruction"]["note_f1"]
    assert f"note F1 of reconstructions: {f1:.3f} (goal ≥ 0.6)" in card
    data = report["music"]["heldout"]["bar_repeat_share"]
    assert "bar repeats of samples, T 0.5: " in card and f"the data's {data:.3f}" in card
    steps = report["interpolation"]["degenerate_steps"]
    assert f"degenerate interpolation steps: {steps} (goal 0)" in card


def test_ship_a_phrase_model(tmp_path: Path, corpus16: Corpus) -> None:
    from melodyvae.checkpoint import read_info
    from melodyvae.training.ship import ship

    source = make_phrase_checkpoint(tmp_path / "run.safetensors", forms=1)
    out = ship(source, corpus16, "my-phrase", tmp_path / "models")
    info = read_info(out)
    assert out.name == "my-phrase.safetensors" and info["preset"] == "my-phrase"
    assert info["metrics"]["test_phrases"] == len(corpus16.subset("test"))
    assert len(info["novelty"]["heldout_bits"]) == len(corpus16.subset("valid"))
    a, b = MelodyVAE.load(source, device="cpu"), MelodyVAE.load(out, device="cpu")
    z = a.sample_z(3, seed=2)
    assert torch.equal(a.decode_tokens(z, 1.0, seed=1), b.decode_tokens(z, 1.0, seed=1))

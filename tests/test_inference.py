"""The inference facade's shared pieces: device choice, seeded batches, noise on z,
interpolation, reading melodies, latent axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import scale_melody

import melodyvae
from melodyvae import inference
from melodyvae.errors import MelodyVAEError
from melodyvae.inference import MelodyVAE, chunk_seed, pick_device, read_melody, vary
from melodyvae.midi import write_midi


def test_the_package_exports_the_facade() -> None:
    from melodyvae import MelodyVAE as Exported

    assert Exported is inference.MelodyVAE
    with pytest.raises(AttributeError):
        melodyvae.NoSuchThing  # noqa: B018


def test_pick_device_names_devices_that_exist_and_refuses_others() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert (pick_device("auto").type == "cuda") == torch.cuda.is_available()
    with pytest.raises(MelodyVAEError, match="unknown device"):
        pick_device("abacus")
    if torch.cuda.is_available():
        assert pick_device("cuda").type == "cuda"
    else:
        with pytest.raises(MelodyVAEError, match="no CUDA device"):
            pick_device("cuda")


def test_vary_draws_the_same_noise_alone_and_in_a_batch() -> None:
    z = np.linspace(-1, 1, 8)
    one = vary(z, 0.5, seed=3)
    many = vary(z, 0.5, seed=3, n=4)
    assert one.shape == (8,) and many.shape == (4, 8)
    np.testing.assert_array_equal(many[0], one)
    assert not np.allclose(many[1], many[0])
    np.testing.assert_array_equal(vary(z, 0.0, seed=3), z)
    assert np.std(vary(np.zeros(4000), 0.5, seed=1)) == pytest.approx(0.5, rel=0.05)


def test_decode_batches_seed_each_chunk(vae: MelodyVAE) -> None:
    z = vae.sample_z(5, seed=0)
    chunks = list(vae.decode_batches(z, 1.0, seed=9, batch_size=2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    for k, chunk in enumerate(chunks):
        alone = vae.decode_tokens(z[2 * k : 2 * k + 2], 1.0, chunk_seed(9, k)).numpy()
        np.testing.assert_array_equal(chunk, alone)
    assert chunk_seed(9, 0) != chunk_seed(9, 1) != chunk_seed(10, 1)


def test_interpolation_runs_from_one_melody_to_the_other(vae: MelodyVAE) -> None:
    a, b = scale_melody(4), scale_melody(4).transpose(5)
    ends = vae.encode([a, b])
    for method in ("slerp", "lerp"):
        zs = vae.interpolation(a, b, 5, method)
        assert zs.shape == (5, vae.z_dim) and zs.dtype == np.float32
        np.testing.assert_allclose(zs[[0, -1]], ends, rtol=1e-5, atol=1e-6)
    middle = vae.interpolation(a, b, 3, "lerp")[1]
    np.testing.assert_allclose(middle, ends.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert len(vae.interpolate(a, b, 4)) == 4
    with pytest.raises(MelodyVAEError):
        vae.interpolation(a, b, 1)
    with pytest.raises(MelodyVAEError):
        vae.interpolation(a, b, 3, "zigzag")


def test_read_melody_reads_midi_and_says_where_it_came_from(tmp_path: Path) -> None:
    melody = scale_melody(2)
    write_midi(melody, tmp_path / "a.mid")
    read, source = read_melody(tmp_path / "a.mid")
    assert read.notes == melody.notes
    assert source.startswith(f"{len(melody.notes)} notes from track")
    assert {".mid", ".midi", ".wav", ".flac"} <= set(inference.melody_suffixes())


def test_latent_axes_of_a_model_without_them_say_so(vae: MelodyVAE) -> None:
    axes = vae.latent_axes
    assert axes.names == [] and axes.problem is not None
    with pytest.raises(MelodyVAEError, match="no latent axes"):
        axes.require()

"""The musical measures of a model: evaluate --music, the report and the card, the docs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_checkpoint, random_tokens

from melodyvae.cli import main
from melodyvae.inference import MelodyVAE
from melodyvae.training import measures
from melodyvae.training.corpus import CORPUS_FORMAT_VERSION, Corpus
from melodyvae.training.evaluate import music_lines, music_measures, reconstruct
from melodyvae.training.markov import MarkovChain
from melodyvae.training.quality import prior_samples
from melodyvae.training.report import build_report

DOCS = Path(__file__).resolve().parent.parent / "docs" / "measures.md"


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    n = 60
    tokens = random_tokens(n, 64, seed=5).astype(np.uint8)
    split = np.repeat(np.array([0, 1, 2], dtype=np.uint8), n // 3)
    meta = {"format_version": CORPUS_FORMAT_VERSION, "bars": 4, "steps_per_bar": 16,
            "hop_bars": 1, "source": "test", "tunes": [str(i) for i in range(n)]}
    return Corpus(tokens, np.arange(n, dtype=np.int32), split, meta)


def test_music_measures_are_the_measures_of_their_parts(vae: MelodyVAE,
                                                         corpus: Corpus) -> None:
    test, train = corpus.subset("test"), corpus.subset("train")
    doc = music_measures(vae, test, train, samples=12, temperatures=(0.0, 1.0), seed=4)
    assert doc["reconstruction"] == measures.reconstruction_measures(test,
                                                                    reconstruct(vae, test))
    assert set(doc["samples"]) == {"0.0", "1.0"}
    assert doc["samples"]["1.0"] == measures.sample_measures(prior_samples(vae, 12, 1.0, 4))
    assert doc["heldout"] == measures.sample_measures(test)
    assert doc["markov"] == measures.sample_measures(MarkovChain.fit(train).sample(12, 4))
    assert doc["settings"]["markov_train_phrases"] == len(train)
    lines = music_lines(doc)
    assert any(line.strip().startswith("Markov chain") for line in lines)
    assert music_measures(vae, test, None, samples=4)["markov"] is None


def test_reconstruction_is_the_greedy_decode_of_the_posterior_mean(vae: MelodyVAE,
                                                                   corpus: Corpus) -> None:
    test = corpus.subset("test")
    mu, _ = vae.encode_tokens(test)
    expected = vae.decode_tokens(mu, 0.0).numpy()
    assert (reconstruct(vae, test, batch_size=7) == expected).all()


def test_every_json_key_is_documented(vae: MelodyVAE, corpus: Corpus) -> None:
    doc = music_measures(vae, corpus.subset("test"), corpus.subset("train"), samples=4)
    documented = set(re.findall(r"`([a-z_0-9.]+)`", DOCS.read_text()))
    keys = set(doc) | set(doc["settings"]) | set(doc["reconstruction"]) | set(doc["heldout"])
    assert keys <= documented, keys - documented


def test_evaluate_music_json(tmp_path: Path, corpus: Corpus,
                             capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "corpus.npz"
    corpus.save(data)
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    assert main(["evaluate", str(ckpt), str(data), "--json", "--music", "--samples", "6"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["music"]["samples"]["0.5"]["n"] == 6
    assert doc["music"]["markov"]["n"] == 6
    assert doc["music"]["reconstruction"]["token_accuracy"] == pytest.approx(
        doc["sampled_accuracy"])
    assert main(["evaluate", str(ckpt), str(data), "--music", "--samples", "6"]) == 0
    text = capsys.readouterr().out
    assert "note F1" in text and "held-out data" in text


def test_card_leads_with_the_model_against_data_and_markov(tmp_path: Path,
                                                           corpus: Corpus) -> None:
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    vae = MelodyVAE.load(ckpt, device="cpu")
    commands = {"report": "python -m melodyvae.training.report M C --out O",
                "evaluate": "melodyvae evaluate M C --music --json"}
    report = build_report(vae, corpus, tmp_path / "card", n_samples=20, music_samples=10,
                          commands=commands)
    card = (tmp_path / "card" / "card.md").read_text()
    saved = json.loads((tmp_path / "card" / "report.json").read_text())
    assert saved["music"] == json.loads(json.dumps(report["music"]))
    first_table = card.index("| held-out data |")
    assert first_table < card.index("teacher-forced accuracy")
    assert "| Markov chain |" in card and f"| {vae.name}, T 1.0 |" in card
    assert "`melodyvae evaluate M C --music --json`" in card
    f1 = report["music"]["reconstruction"]["note_f1"]
    assert f"note F1 of reconstructions: {f1:.3f} (goal ≥ 0.8) — **not met**" in card


def test_cli_default_sample_count_is_the_reports() -> None:
    from melodyvae.cli import build_parser
    from melodyvae.training.evaluate import MUSIC_SAMPLES

    args = build_parser().parse_args(["evaluate", "hier-4bar", "data.npz", "--music"])
    assert args.samples == MUSIC_SAMPLES

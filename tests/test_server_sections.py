"""/mvae/section/vary and /mvae/section/encode over real UDP against a served phrase model."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import make_checkpoint, make_phrase_checkpoint, osc, scale_melody
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage

from melodyvae.inference import MelodyVAE, read_melody
from melodyvae.melody import Melody
from melodyvae.midi import write_midi
from melodyvae.phrase_inference import PhraseMelodyVAE

Notes = list[tuple[int, float, float]]  # (pitch, start beat, duration in beats)


class Server:
    """``melodyvae serve`` in a subprocess and a UDP socket that talks to it."""

    def __init__(self, model: Path, allow_dir: Path) -> None:
        command = [sys.executable, "-m", "melodyvae.cli", "serve", "--model", str(model),
                   "--port", "0", "--threads", "1", "--device", "cpu",
                   "--allow-dir", str(allow_dir)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        self.addr = ("127.0.0.1", int(match.group(1)))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(60)

    def ask(self, address: str, *args: object) -> Notes | str:
        """Send one message; the notes of the melody it brings, or the /mvae/error reason."""
        self.sock.sendto(osc(address, *args), self.addr)
        notes: Notes = []
        while True:
            data, _ = self.sock.recvfrom(65536)
            messages = ([m for m in OscBundle(data) if isinstance(m, OscMessage)]
                        if data.startswith(b"#bundle") else [OscMessage(data)])
            for m in messages:
                if m.address == "/mvae/error":
                    assert m.params[0] == address
                    return str(m.params[1])
                if m.address == "/mvae/note":
                    notes.append((int(m.params[1]), round(float(m.params[3]), 4),
                                  round(float(m.params[4]), 4)))
                if m.address == "/mvae/melody/end":
                    return notes

    def close(self) -> None:
        self.sock.close()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        assert self.proc.returncode == 0


def notes_of(melody: Melody) -> Notes:
    return [(n.pitch, round(melody.steps_to_beats(n.start), 4),
             round(melody.steps_to_beats(n.duration), 4)) for n in melody.notes]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sections")
    make_phrase_checkpoint(folder / "tiny-phrase.safetensors")
    make_checkpoint(folder / "tiny-plain.safetensors")
    write_midi(scale_melody(bars=8), folder / "riff.mid")  # its first 4 bars are read
    return folder


@pytest.fixture(scope="module")
def phrase_server(folder: Path) -> Iterator[Server]:
    server = Server(folder / "tiny-phrase.safetensors", folder)
    yield server
    server.close()


def section_tokens(vae: PhraseMelodyVAE, codes: np.ndarray) -> np.ndarray:
    return vae.decode_codes(codes).cpu().numpy()[0].reshape(vae.sections, -1)  # (4, 64)


def test_vary_keeps_the_other_sections_and_accumulates(folder: Path,
                                                       phrase_server: Server) -> None:
    vae = MelodyVAE.load(folder / "tiny-phrase.safetensors", device="cpu")
    assert isinstance(vae, PhraseMelodyVAE)
    z = np.zeros(vae.z_dim, np.float32)
    z[:3] = [0.5, -1.0, 0.25]
    assert phrase_server.ask("/mvae/z", 0.5, -1.0, 0.25) == notes_of(vae.decode(z)[0])
    base = vae.codes(z)[0]
    before = section_tokens(vae, base)

    varied = vae.vary_codes(base, 2, 5.0, 7)
    notes = phrase_server.ask("/mvae/section/vary", 2, 5.0, 7)
    after = section_tokens(vae, varied)
    assert notes == notes_of(vae.melody_from_tokens(after.reshape(-1)))
    for s in (0, 1, 3):
        assert np.array_equal(after[s], before[s])
    assert not np.array_equal(after[2], before[2])

    twice = vae.vary_codes(varied, 0, 5.0, 8)  # on top of the first: section 2 stays varied
    notes = phrase_server.ask("/mvae/section/vary", 0, 5.0, 8)
    again = section_tokens(vae, twice)
    assert notes == notes_of(vae.melody_from_tokens(again.reshape(-1)))
    assert np.array_equal(again[2], after[2]) and np.array_equal(again[1], before[1])
    assert not np.array_equal(again[0], before[0])

    # a message that sets or moves z drops the sections: the plain decode of z again
    assert phrase_server.ask("/mvae/vary", 0.0, 1) == notes_of(vae.decode(z)[0])
    fresh = section_tokens(vae, vae.vary_codes(base, 3, 5.0, 9))  # not on top of `twice`
    notes = phrase_server.ask("/mvae/section/vary", 3, 5.0, 9)
    assert notes == notes_of(vae.melody_from_tokens(fresh.reshape(-1)))
    assert phrase_server.ask("/mvae/z", 0.5, -1.0, 0.25) == notes_of(vae.decode(z)[0])


def test_encode_sets_a_section_from_a_midi_file(folder: Path, phrase_server: Server) -> None:
    vae = MelodyVAE.load(folder / "tiny-phrase.safetensors", device="cpu")
    assert isinstance(vae, PhraseMelodyVAE)
    z = np.zeros(vae.z_dim, np.float32)
    z[:2] = [-0.3, 0.8]
    phrase_server.ask("/mvae/z", -0.3, 0.8)
    melody, _ = read_melody(folder / "riff.mid")
    codes = vae.codes(z)[0]
    codes[1] = vae.section.encode(melody)
    notes = phrase_server.ask("/mvae/section/encode", 1, "riff.mid")
    tokens = section_tokens(vae, codes)
    assert notes == notes_of(vae.melody_from_tokens(tokens.reshape(-1)))
    before = section_tokens(vae, vae.codes(z)[0])
    assert all(np.array_equal(tokens[s], before[s]) for s in (0, 2, 3))


def test_bad_arguments_get_one_line_errors(phrase_server: Server) -> None:
    assert "0..3" in str(phrase_server.ask("/mvae/section/vary", 4, 1.0))
    assert "0..3" in str(phrase_server.ask("/mvae/section/vary", -1, 1.0))
    assert "amount" in str(phrase_server.ask("/mvae/section/vary", 0, 11.0))
    assert "expects" in str(phrase_server.ask("/mvae/section/vary", 0))
    assert "outside the allowed folder" in str(
        phrase_server.ask("/mvae/section/encode", 0, "../x.mid"))
    assert "0..3" in str(phrase_server.ask("/mvae/section/encode", 9, "riff.mid"))
    assert isinstance(phrase_server.ask("/mvae/sample", 0.0, 3), list)  # still serving


def test_a_plain_model_refuses_section_messages(folder: Path) -> None:
    server = Server(folder / "tiny-plain.safetensors", folder)
    try:
        for message in (("/mvae/section/vary", 0, 1.0), ("/mvae/section/encode", 0, "riff.mid")):
            reason = server.ask(*message)
            assert isinstance(reason, str) and "not a phrase model" in reason, reason
    finally:
        server.close()

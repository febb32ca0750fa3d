"""The OSC handlers without sockets: datagrams built with python-osc go into the dispatch
function, the engine runs in the test thread, and the replies are parsed back."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_checkpoint, scale_melody
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from melodyvae.decode import MAX_ROWS, Rolling, numpy_context
from melodyvae.inference import MelodyVAE, slerp
from melodyvae.melody import from_note_list
from melodyvae.server.core import ServerConfig, ServerCore
from melodyvae.server.engine import MAX_UNANSWERED_S
from melodyvae.server.protocol import Message, parse_packet

CLIENT = ("127.0.0.1", 50000)
Z_DIM = 8  # tiny presets


def axes_doc(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((Z_DIM, Z_DIM)))
    return {
        "pca": {"mean": rng.standard_normal(Z_DIM).tolist(),
                "std": [2.0, 1.5, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5],
                "directions": q.T.tolist()},
        "attributes": {"note_density": rng.standard_normal(Z_DIM).tolist(),
                       "mean_pitch": rng.standard_normal(Z_DIM).tolist()},
    }


@pytest.fixture(scope="module")
def vae_axes(tmp_path_factory: pytest.TempPathFactory) -> MelodyVAE:
    path = make_checkpoint(tmp_path_factory.mktemp("model") / "axes.safetensors",
                           extra={"axes": axes_doc()})
    return MelodyVAE.load(path, device="cpu")


class Wire:
    """A ServerCore with a list for a socket."""

    def __init__(self, vae: MelodyVAE, **config: Any) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.core = ServerCore(vae, lambda data, addr: self.sent.append((data, addr)),
                               ServerConfig(**config))

    def send(self, address: str, *args: Any, types: str | None = None,
             sender: tuple[str, int] = CLIENT) -> None:
        builder = OscMessageBuilder(address)
        for i, value in enumerate(args):
            builder.add_arg(value, types[i] if types else None)
        self.core.handle_datagram(builder.build().dgram, sender)

    def replies(self, run: bool = True) -> list[tuple[str, tuple[Any, ...], tuple[str, int]]]:
        """Everything sent since the last call: (address, args, destination)."""
        if run:
            assert self.core.files.wait_idle()
            self.core.engine.run_pending()
        out = []
        for data, addr in self.sent:
            for item in parse_packet(data):
                assert isinstance(item, Message)
                out.append((item.address, item.args, addr))
        self.sent.clear()
        return out

    def one(self, address: str) -> tuple[Any, ...]:
        got = [r for r in self.replies() if r[0] == address]
        assert len(got) == 1, got
        return got[0][1]

    def error(self) -> str:
        got = self.replies()
        assert [r[0] for r in got] == ["/mvae/error"], got
        return str(got[0][1][1])

    def melodies(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for address, args, addr in self.replies():
            if address == "/mvae/melody/begin":
                out.append({"id": args[0], "bars": args[1], "spb": args[2], "qpm": args[3],
                            "notes": [], "to": addr, "ended": False})
            elif address == "/mvae/note":
                assert args[0] == out[-1]["id"]
                out[-1]["notes"].append(args[1:])
            elif address == "/mvae/melody/end":
                assert args[0] == out[-1]["id"]
                out[-1]["ended"] = True
        return out


def notes_of(vae: MelodyVAE, z: np.ndarray, temperature: float = 0.0,
             seed: int | None = None) -> list[tuple[Any, ...]]:
    melody = vae.decode(np.asarray(z, np.float32)[None], temperature, seed)[0]
    return [(n.pitch, n.velocity, n.start / 4, n.duration / 4) for n in melody.notes]


def test_ping_status_and_stats(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/ping")
    assert wire.replies() == [("/mvae/pong", (), CLIENT)]
    wire.send("/mvae/ping", 7, 0.5, "x")  # echoed: a client can match pongs to pings
    assert wire.replies() == [("/mvae/pong", (7, 0.5, "x"), CLIENT)]
    wire.send("/mvae/status")
    assert wire.one("/mvae/status") == ("tiny", 4, Z_DIM, "cpu", 16, 0)
    wire.send("/mvae/stats")
    stats = wire.one("/mvae/stats")
    assert len(stats) == 19 and stats[0] == 4  # four datagrams received


def test_z_answers_with_the_melody_of_that_vector(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/z", 0.5, -1.0, 0.2)
    (melody,) = wire.melodies()
    z = np.zeros(Z_DIM)
    z[:3] = [0.5, -1.0, 0.2]
    assert melody["ended"] and melody["to"] == CLIENT
    assert (melody["bars"], melody["spb"], melody["qpm"]) == (4, 16, 120.0)
    got = [(p, v, pytest.approx(s), pytest.approx(d)) for p, v, s, d in melody["notes"]]
    assert got == notes_of(vae, z.astype(np.float32))
    starts = [note[2] for note in melody["notes"]]
    assert starts == sorted(starts)  # bar order
    wire.send("/mvae/z", 0.1)
    assert wire.melodies()[0]["id"] == melody["id"] + 1


def test_notes_come_in_one_bundle_per_bar(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/z", *[1.0] * Z_DIM)
    wire.core.engine.run_pending()
    datagrams = [data for data, _ in wire.sent]
    assert OscMessage(datagrams[0]).address == "/mvae/melody/begin"
    assert OscMessage(datagrams[-1]).address == "/mvae/melody/end"
    for data in datagrams[1:-1]:
        bars = {int(m.params[3] // 4) for m in OscBundle(data)}  # start beat // 4 beats
        assert len(bars) == 1


def test_pd_floats_work_where_ints_are_meant(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/sample", 0.7, 12.0, types="ff")
    as_floats = wire.melodies()[0]["notes"]
    wire.send("/mvae/sample", 0.7, 12, types="fi")
    assert wire.melodies()[0]["notes"] == as_floats
    wire.send("/mvae/z/i", 2.0, 1.5, types="ff")
    assert wire.core.client(CLIENT).z[2] == pytest.approx(1.5)


def test_sample_is_reproducible_by_seed_and_sets_z(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/sample", 0.9, 5)
    first = wire.melodies()[0]["notes"]
    client = wire.core.clients.get(CLIENT)
    assert client is not None
    np.testing.assert_allclose(client.z, vae.sample_z(1, 5)[0], rtol=1e-6)
    assert first == notes_of(vae, vae.sample_z(1, 5)[0], 0.9, 5)
    wire.send("/mvae/sample")  # no seed: a fresh one each time, still a melody
    assert len(wire.melodies()) == 1


def test_temperature_and_seed_apply_to_later_melodies(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/temperature", 1.5)
    wire.send("/mvae/seed", 3.0)
    assert wire.replies() == []  # settings answer nothing
    wire.send("/mvae/z", 0.3, 0.3)
    z = np.zeros(Z_DIM, np.float32)
    z[:2] = 0.3
    assert wire.melodies()[0]["notes"] == [
        (p, v, pytest.approx(s), pytest.approx(d)) for p, v, s, d in notes_of(vae, z, 1.5, 3)]


def test_vary_decodes_around_z_without_moving_it(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/z", 0.2, 0.4)
    wire.melodies()
    client = wire.core.clients.get(CLIENT)
    assert client is not None
    before = client.z.copy()
    wire.send("/mvae/vary", 0.5, 9)
    a = wire.melodies()[0]["notes"]
    wire.send("/mvae/vary", 0.5, 9)
    assert wire.melodies()[0]["notes"] == a
    np.testing.assert_array_equal(client.z, before)
    noise = np.random.default_rng(9).standard_normal(Z_DIM)
    expected = notes_of(vae, (before + 0.5 * noise).astype(np.float32))
    assert a == [(p, v, pytest.approx(s), pytest.approx(d)) for p, v, s, d in expected]


def test_latest_wins_for_one_client(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    for i in range(50):
        wire.send("/mvae/z", i / 10.0)
    melodies = wire.melodies()
    assert len(melodies) == 1
    z = np.zeros(Z_DIM, np.float32)
    z[0] = 4.9
    assert melodies[0]["notes"] == [
        (p, v, pytest.approx(s), pytest.approx(d)) for p, v, s, d in notes_of(vae, z)]
    engine = wire.core.engine
    assert engine.snapshot().superseded == 49
    assert engine.snapshot().max_waiting == 1


def test_clients_that_ask_together_are_decoded_as_one_batch(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    vectors = {("127.0.0.1", 50000 + i): [0.3 * i, -0.2 * i, 1.0] for i in range(4)}
    for sender, z in vectors.items():
        wire.send("/mvae/z", *z, sender=sender)
    melodies = wire.melodies()
    stats = wire.core.engine.snapshot()
    assert (stats.batches, stats.max_batch, stats.decoded) == (1, 4, 4)
    assert {m["to"] for m in melodies} == set(vectors)
    for m in melodies:
        vector = np.zeros(Z_DIM, np.float32)
        vector[:3] = vectors[m["to"]]
        assert m["notes"] == [(p, v, pytest.approx(s), pytest.approx(d))
                              for p, v, s, d in notes_of(vae, vector)]  # batched == one by one


def test_a_batch_wider_than_max_rows_answers_every_client_as_alone(
        vae: MelodyVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # wide steps use 2 threads
    wire = Wire(vae)
    clients = MAX_ROWS // vae.bars + 4
    vectors = {("127.0.0.1", 51000 + i): [0.2 * i, 1.0 - 0.1 * i] for i in range(clients)}
    for sender, z in vectors.items():
        wire.send("/mvae/z", *z, sender=sender)
    melodies = wire.melodies()
    assert wire.core.engine.snapshot().max_batch == clients
    assert sorted(m["to"] for m in melodies) == sorted(vectors)
    for m in melodies:
        vector = np.zeros(Z_DIM, np.float32)
        vector[:2] = vectors[m["to"]]
        assert m["notes"] == [(p, v, pytest.approx(s), pytest.approx(d))
                              for p, v, s, d in notes_of(vae, vector)]


@pytest.mark.parametrize("address, args, types, reason", [
    ("/mvae/nope", (), None, "unknown address"),
    ("/other", (), None, "listens under /mvae/"),
    ("/mvae/z", ("x",), None, "must be a number, not a string"),
    ("/mvae/z", (math.nan,), "f", "must be finite"),
    ("/mvae/z", (math.inf, 1.0), "df", "must be finite"),
    ("/mvae/z", (0.0,) * (Z_DIM + 1), None, "latent size is 8"),
    ("/mvae/z/i", (8, 1.0), None, "index (argument 1) must lie in 0..7"),
    ("/mvae/z/i", (1,), None, "expects 2 arguments"),
    ("/mvae/xy", (0.0, 0.0), None, "model has no latent axes; run melodyvae axes MODEL"),
    ("/mvae/axis", ("pc1", 1.0), None, "model has no latent axes"),
    ("/mvae/axes", (), None, "model has no latent axes"),
    ("/mvae/temperature", (-1.0,), None, "must lie in 0..10"),
    ("/mvae/seed", (-3,), None, "must lie in 0.."),
    ("/mvae/tempo", (1000.0,), None, "must lie in 20..400"),
    ("/mvae/lookahead", (1e9,), None, "must lie in 0..2000"),
    ("/mvae/ping", (1.0,) * 17, None, "expects 0 to 16 arguments"),
    ("/mvae/ping", (True,), None, "echoes only int, float and string"),
    ("/mvae/slot/recall", ("A",), None, "slot 'A' is empty"),
    ("/mvae/slot/store", ("",), None, "must not be empty"),
    ("/mvae/slot/store", ("x" * 65,), None, "longer than 64"),
    ("/mvae/blend", (0.5, 0.5), None, "slot 'A' is empty"),
    ("/mvae/encode", (60, 0.0), None, "not a multiple of 3"),
    ("/mvae/encode", (200, 0.0, 1.0), None, "pitch (argument 1) must lie in 0..127"),
    ("/mvae/encode", (60, 0.0, 0.0), None, "above 0"),
    ("/mvae/encode", (60, 0.0, 1.0) * 65, None, "at most 64 fit"),
    ("/mvae/encode/file", ("a.mid",), None, "start the server with --allow-dir"),
    ("/mvae/reply", (70000,), None, "must lie in 0..65535"),
])
def test_bad_requests_get_an_error_with_a_reason(
        vae: MelodyVAE, address: str, args: tuple[Any, ...], types: str | None,
        reason: str) -> None:
    wire = Wire(vae)
    wire.send(address, *args, types=types)
    got = wire.replies()
    assert [r[0] for r in got] == ["/mvae/error"], got
    assert got[0][1][0] == address
    assert reason in got[0][1][1]


def test_malformed_datagrams_get_an_error_and_the_server_goes_on(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    for data in (b"", b"\xff" * 7, b"/mvae/z\x00,\xff\x00\x00", b"#bundle\x00\x01"):
        wire.core.handle_datagram(data, CLIENT)
        assert [r[0] for r in wire.replies()] == ["/mvae/error"]
    wire.send("/mvae/ping")
    assert wire.replies()[0][0] == "/mvae/pong"


def test_a_far_future_bundle_is_handled_at_once(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    builder = OscBundleBuilder(2_000_000_000)  # 2033
    builder.add_content(OscMessageBuilder("/mvae/ping").build())
    builder.add_content(OscMessageBuilder("/mvae/nope").build())
    wire.core.handle_datagram(builder.build().dgram, CLIENT)
    assert [r[0] for r in wire.replies()] == ["/mvae/pong", "/mvae/error"]


def test_xy_and_axes_follow_the_documented_rule(vae_axes: MelodyVAE) -> None:
    wire = Wire(vae_axes)
    doc = axes_doc()
    mean = np.array(doc["pca"]["mean"])
    std = np.array(doc["pca"]["std"])
    dirs = np.array(doc["pca"]["directions"])
    density = np.array(doc["attributes"]["note_density"])
    wire.send("/mvae/axes")
    assert wire.one("/mvae/axes") == tuple(f"pc{k}" for k in range(1, 9)) + (
        "note_density", "mean_pitch")
    wire.send("/mvae/status")
    assert wire.one("/mvae/status")[5] == 10
    client = wire.core.client(CLIENT)
    np.testing.assert_allclose(client.z, mean)  # a new client starts at the mean
    wire.send("/mvae/xy", 1.0, -2.0)
    assert len(wire.melodies()) == 1
    np.testing.assert_allclose(client.z, mean + 1.0 * std[0] * dirs[0] - 2.0 * std[1] * dirs[1])
    wire.send("/mvae/axis", "pc3", 0.5)
    wire.send("/mvae/axis", "note_density", 2.0)
    assert len(wire.melodies()) == 1  # latest wins
    np.testing.assert_allclose(
        client.z, mean + std[0] * dirs[0] - 2.0 * std[1] * dirs[1] + 0.5 * std[2] * dirs[2]
        + 2.0 * density)
    np.testing.assert_allclose(dirs @ (client.z - mean - 2.0 * density) / std,
                               [1.0, -2.0, 0.5, 0, 0, 0, 0, 0], atol=1e-9)
    wire.send("/mvae/axis", "nope", 1.0)
    assert "unknown axis 'nope'" in wire.error()


def test_axis_sets_several_pairs_at_once_or_none(vae_axes: MelodyVAE) -> None:
    wire = Wire(vae_axes)
    client = wire.core.client(CLIENT)
    wire.send("/mvae/axis", "pc4", 1.5, "pc7", -0.5, "mean_pitch", 0.25)
    assert len(wire.melodies()) == 1  # one melody for the three
    assert (client.pcs[3], client.pcs[6]) == (1.5, -0.5)
    assert client.amounts == {"mean_pitch": 0.25}
    wire.send("/mvae/axis", "pc1", 2.0, "nope", 1.0)
    assert "unknown axis 'nope'" in wire.error()
    assert client.pcs[0] == 0.0  # nothing was set
    wire.send("/mvae/axis", "pc1", 2.0, "pc2")
    assert "(name, value) pairs" in wire.error()
    wire.send("/mvae/axis", *(["pc1", 1.0] * 17))
    assert "expects 2 to 32 arguments" in wire.error()


def test_a_full_vector_is_kept_exactly_and_then_moved_along_axes(
        vae_axes: MelodyVAE) -> None:
    wire = Wire(vae_axes)
    z = np.linspace(-1, 1, Z_DIM)
    wire.send("/mvae/z", *z.tolist())
    client = wire.core.client(CLIENT)
    np.testing.assert_allclose(client.z, z.astype(np.float32), atol=1e-6)
    pcs = client.pcs.copy()
    wire.send("/mvae/xy", 0.0, 0.0)
    doc = axes_doc()
    dirs, std = np.array(doc["pca"]["directions"]), np.array(doc["pca"]["std"])
    expected = z + (0 - pcs[0]) * std[0] * dirs[0] + (0 - pcs[1]) * std[1] * dirs[1]
    np.testing.assert_allclose(client.z, expected, atol=1e-5)
    wire.send("/mvae/z/i", 3, 7.0)
    assert client.z[3] == pytest.approx(7.0)
    wire.send("/mvae/z/get")
    assert [r for r in wire.replies(run=False) if r[0] == "/mvae/z"][0][1][3] == 7.0


def test_slots_interpolate_and_blend(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    corners = {name: np.eye(Z_DIM)[i] * 2 for i, name in enumerate("ABCD")}
    for name, z in corners.items():
        wire.send("/mvae/z", *z.tolist())
        wire.send("/mvae/slot/store", name)
    client = wire.core.client(CLIENT)
    wire.replies()
    wire.send("/mvae/slot/recall", "B")
    assert len(wire.melodies()) == 1
    np.testing.assert_allclose(client.z, corners["B"])
    wire.send("/mvae/interp", "A", "B", 0.25)
    np.testing.assert_allclose(client.z, slerp(corners["A"], corners["B"], 0.25))
    wire.send("/mvae/interp", "A", "B", 7.0)  # t is clamped to 0..1
    np.testing.assert_allclose(client.z, corners["B"], atol=1e-12)
    wire.send("/mvae/blend", 0.25, 0.5)
    expected = (0.75 * 0.5 * corners["A"] + 0.25 * 0.5 * corners["B"]
                + 0.75 * 0.5 * corners["C"] + 0.25 * 0.5 * corners["D"])
    np.testing.assert_allclose(client.z, expected)
    assert len(wire.melodies()) == 1


def test_slots_clients_and_routes_are_bounded(vae: MelodyVAE) -> None:
    wire = Wire(vae, max_clients=3, max_slots=4)
    for i in range(10):
        wire.send("/mvae/slot/store", f"s{i}")
    assert list(wire.core.client(CLIENT).slots) == ["s6", "s7", "s8", "s9"]
    for port in range(60000, 60010):
        wire.send("/mvae/z", 1.0, sender=("127.0.0.1", port))
        wire.send("/mvae/reply", port + 1000, sender=("127.0.0.1", port))
    assert len(wire.core.clients) == 3
    assert len(wire.core.routes) <= 12
    assert len(wire.core.engine.decodes.jobs) <= 3
    assert len(wire.melodies()) <= 3


def test_replies_go_where_reply_options_say(vae: MelodyVAE) -> None:
    wire = Wire(vae, reply_port=7777)
    wire.send("/mvae/ping")
    assert wire.replies()[0][2] == ("127.0.0.1", 7777)
    wire = Wire(vae, reply_host="10.1.2.3")
    wire.send("/mvae/ping")
    assert wire.replies()[0][2] == ("10.1.2.3", CLIENT[1])
    wire = Wire(vae)
    wire.send("/mvae/reply", 9001.0)
    wire.send("/mvae/ping")
    assert wire.replies()[0][2] == ("127.0.0.1", 9001)
    wire.send("/mvae/reply", 0)
    wire.send("/mvae/ping")
    assert wire.replies()[0][2] == CLIENT


def test_encode_a_note_list_replies_z_and_sets_it(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    triples = [(60, 0.0, 1.0), (64, 1.0, 0.5), (67, 1.5, 2.5)]
    wire.send("/mvae/encode", *[v for t in triples for v in t])
    (z,) = [args for address, args, _ in wire.replies() if address == "/mvae/z"]
    expected = vae.encode(from_note_list(triples, vae.steps))
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(wire.core.client(CLIENT).z, expected, rtol=1e-5, atol=1e-6)
    wire.send("/mvae/encode", 60.0, 0.0, 1.0, types="fff")  # Pd: the pitch as a float
    assert [r[0] for r in wire.replies()] == ["/mvae/z"]


def test_encode_then_vary_in_one_burst_varies_the_encoded_melody(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/encode", 60, 0.0, 1.0, 62, 1.0, 1.0)
    wire.send("/mvae/vary", 0.0)
    replies = wire.replies()
    assert replies[0][0] == "/mvae/z"  # encodes run before decodes
    encoded = np.array(replies[0][1], np.float32)
    notes = [r[1][1:] for r in replies if r[0] == "/mvae/note"]
    assert notes == [(p, v, pytest.approx(s), pytest.approx(d))
                     for p, v, s, d in notes_of(vae, encoded)]


def test_encode_file_reads_midi_inside_allow_dir_only(vae: MelodyVAE, tmp_path: Path) -> None:
    from melodyvae.midi import write_midi

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    write_midi(scale_melody(), allowed / "scale.mid")
    write_midi(scale_melody(), tmp_path / "outside.mid")
    (allowed / "notes.txt").write_text("hi")
    (allowed / "link.mid").symlink_to(tmp_path / "outside.mid")
    wire = Wire(vae, allow_dir=allowed)
    wire.send("/mvae/encode/file", "scale.mid")
    (z,) = [args for address, args, _ in wire.replies() if address == "/mvae/z"]
    np.testing.assert_allclose(z, vae.encode(scale_melody()), rtol=1e-5, atol=1e-6)
    wire.send("/mvae/encode/file", str(allowed / "scale.mid"))
    assert [r[0] for r in wire.replies()] == ["/mvae/z"]
    for name, reason in [("../outside.mid", "outside the allowed folder"),
                         (str(tmp_path / "outside.mid"), "outside the allowed folder"),
                         ("link.mid", "outside the allowed folder"),
                         ("notes.txt", "not a MIDI or audio file (.mid, .midi"),
                         ("missing.mid", "no such file")]:
        wire.send("/mvae/encode/file", name)
        assert reason in wire.error()
    (allowed / "broken.mid").write_bytes(b"MThd garbage")
    wire.send("/mvae/encode/file", "broken.mid")
    assert "broken MIDI file" in wire.error()


def test_encode_file_passes_transcriber_errors_on(vae: MelodyVAE, tmp_path: Path) -> None:
    pytest.importorskip("melodyvae.audio")
    (tmp_path / "take.wav").write_bytes(b"RIFF not really a wave file")
    wire = Wire(vae, allow_dir=tmp_path)
    wire.send("/mvae/encode/file", "take.wav")
    reason = wire.error()
    assert "take.wav" in reason and "unavailable" not in reason


@pytest.mark.parametrize("rolling", [True, False], ids=["rolling", "whole-batch"])
def test_a_model_failure_is_an_error_reply_not_a_crash(
        vae: MelodyVAE, monkeypatch: pytest.MonkeyPatch, rolling: bool) -> None:
    if not rolling:  # as on a GPU
        monkeypatch.setattr(vae, "rolling", lambda: None)
    wire = Wire(vae)
    assert (wire.core.engine.rolling is not None) == rolling

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    if rolling:
        monkeypatch.setattr(Rolling, "step", boom)
    else:
        monkeypatch.setattr(vae, "decode_tokens", boom)
    wire.send("/mvae/z", 1.0)
    assert "internal error: RuntimeError: boom" in wire.error()
    monkeypatch.undo()  # the engine keeps the decoder it started with
    wire.send("/mvae/z", 1.0)
    assert len(wire.melodies()) == 1


def melody_notes(vae: MelodyVAE, first: float) -> list[tuple[Any, ...]]:
    """What a /mvae/z with one argument, ``first``, answers."""
    z = np.zeros(Z_DIM, np.float32)
    z[0] = first
    return [(p, v, pytest.approx(s), pytest.approx(d)) for p, v, s, d in notes_of(vae, z)]


def admit_and_step(wire: Wire) -> None:
    """What the worker does with a request that has just arrived: it joins the rolling
    batch and takes one step."""
    engine = wire.core.engine
    with numpy_context():
        engine._take_and_run()
        engine._step()


def test_a_decode_gone_stale_leaves_the_batch_and_the_newer_request_answers(
        vae: MelodyVAE) -> None:
    wire = Wire(vae)
    engine = wire.core.engine
    other = ("127.0.0.1", 50001)
    wire.send("/mvae/z", 1.0)
    wire.send("/mvae/z", 3.0, sender=other)
    admit_and_step(wire)  # both clients' decodes are running
    wire.send("/mvae/z", 2.0)  # ... when the first moves on
    admit_and_step(wire)
    assert engine.snapshot().cancelled == 1
    assert len(engine.rolling) == 2  # the other client's decode stays, the new one joined
    melodies = wire.melodies()
    assert [(m["to"], m["notes"]) for m in melodies] == [
        (other, melody_notes(vae, 3.0)), (CLIENT, melody_notes(vae, 2.0))]
    assert engine.snapshot().decoded == 2
    assert not engine.running and not engine.flying


def test_a_stale_whole_batch_stops_once_every_client_has_moved_on(
        vae: MelodyVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vae, "rolling", lambda: None)  # as on a GPU
    wire = Wire(vae)
    engine = wire.core.engine
    wire.send("/mvae/z", 1.0)
    with engine.cond:
        running = engine.decodes.take()  # the worker has started on this one
    wire.send("/mvae/z", 2.0)  # ... when the client moves on
    engine._decode(running)
    assert engine.snapshot().cancelled == 1
    assert engine.snapshot().decoded == 0
    melodies = wire.melodies()
    assert len(melodies) == 1
    assert melodies[0]["notes"] == melody_notes(vae, 2.0)


def test_a_flood_hears_a_melody_once_it_has_waited_long_enough(
        vae: MelodyVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    wire = Wire(vae)
    engine = wire.core.engine
    now = [100.0]
    monkeypatch.setattr(engine, "clock", lambda: now[0])
    step = MAX_UNANSWERED_S / 2.5

    def flood_step(value: float) -> None:
        wire.send("/mvae/z", value)
        admit_and_step(wire)
        now[0] += step

    for value in (1.0, 2.0, 3.0, 4.0):  # each stops the one before, within the wait allowed
        flood_step(value)
    assert (engine.snapshot().cancelled, engine.snapshot().decoded) == (3, 0)
    flood_step(5.0)  # 4 steps of MAX_UNANSWERED_S / 2.5 since the first stop: 4.0 stays
    assert engine.snapshot().cancelled == 3
    assert [job.protected for job in engine.flying[CLIENT]] == [True, False]
    flood_step(6.0)  # 5.0 leaves, 4.0 still runs: never more than two per client
    assert engine.snapshot().cancelled == 4
    assert len(engine.rolling) == 2
    melodies = wire.melodies()  # the flood stops: 4.0 completes, then 6.0
    assert [m["notes"] for m in melodies] == [melody_notes(vae, 4.0), melody_notes(vae, 6.0)]
    assert (engine.snapshot().cancelled, engine.snapshot().decoded) == (4, 2)
    assert not engine.running and not engine.flying


def test_a_melody_is_the_clients_before_its_reply_goes_out(vae: MelodyVAE) -> None:
    """A client that sends /mvae/play the moment it hears /mvae/melody/end finds that
    melody (no second decode), however the threads interleave."""
    melody_when_sent: list[object] = []

    def send(data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith(b"/mvae/melody/") or data.startswith(b"#bundle"):
            client = core.clients.get(CLIENT)
            melody_when_sent.append(None if client is None else client.melody)

    core = ServerCore(vae, send, ServerConfig())
    builder = OscMessageBuilder("/mvae/z")
    builder.add_arg(1.0)
    core.handle_datagram(builder.build().dgram, CLIENT)
    core.engine.run_pending()
    assert len(melody_when_sent) >= 2  # begin ... end
    assert all(m is not None for m in melody_when_sent)

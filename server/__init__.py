"""The OSC server (installed as melodyvae.server); the address space is in docs/osc.md.

protocol.py  parse datagrams, check arguments, pack replies
state.py     per-client latent coordinates, settings and slots (all bounded)
worker.py    the one background-thread loop (work, poke or deadline) the threads below share
engine.py    latest-wins request slots; a rolling decode batch (whole batches on a GPU)
playback.py  the tempo clock: looping melodies and cued answers as timetagged note bundles
session.py   a performer's live clock, the notes played on it, answer settings
answers.py   composing an answer with the model (encode the call, move z, decode)
live.py      live improvisation: answer deadlines and the /mvae/in, /listen, /answer handlers
files.py     /mvae/encode/file inside --allow-dir, on its own thread
core.py      dispatch: addresses to handlers, replies, stats; no socket (tests drive it)
app.py       the UDP socket, threads and process lifecycle (``melodyvae serve``)
cli.py       the ``serve`` subcommand's arguments
web.py       ``serve --web``: the browser page (static/) and its WebSockets, one client each
midi_*.py    MIDI ports (docs/midi.md): midi_bridge.py puts them on the server, midi_port.py
             opens, sends and reads them, midi_clock.py follows a host's clock,
             midi_map.py maps knobs to axes, midi_cli.py has the options, midi_jack.py
             runs a headless JACK server for the tests and the benchmark
"""

// The control surface: connects to the server (one WebSocket, OSC messages as JSON) and
// wires the pad, the sliders, the corner slots, the piano roll and the transport to it.
// Tests and benchmarks read what happened from window.mvae.

import { Pad } from "./pad.js";
import { Transport } from "./player.js";
import { Roll, thumbnail } from "./roll.js";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token") || "";
const PAD_RANGE = 3; // the pad spans +-3 standard deviations on each axis
const SLIDER_RANGE = 2; // attribute amounts from -2 to 2
const RECONNECT_MS = 1000;
const MAX_RECONNECTS = 10;

const roll = new Roll($("roll"));
const transport = new Transport();
const pad = new Pad($("pad"), { range: PAD_RANGE, onmove: padMoved });

const state = {
  hello: null,
  pcs: [], // the server's PCA coordinates for this tab, mirrored
  building: null, // the melody arriving
  askedAt: null, // performance.now() of the last request that will bring a melody
  decodeNextZ: false, // decode the next /mvae/z (a dropped file's, or a refresh)
  stored: {}, // corner slot -> the melody it held when stored
};

// What tests and benchmarks read.
const mvae = (window.mvae = {
  connected: false,
  tab: null,
  hello: null,
  melody: null, // the melody on screen
  melodies: 0, // melodies drawn
  latencies: [], // ms from a request (pad move, slider, button) to its melody drawn
  errors: [], // [address, reason] from /mvae/error, and upload errors
  z: null, // the last latent vector received
  last: {}, // address -> arguments of the last message received there
  scheduled: transport.scheduled, // notes the transport scheduled
  transport,
  pad,
  send,
});

// ------------------------------------------------------------------ connection

let socket = null;
let reconnects = 0;

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/ws?token=${encodeURIComponent(token)}`);
  socket.onmessage = (e) => receive(JSON.parse(e.data));
  socket.onopen = () => {
    reconnects = 0;
  };
  socket.onclose = () => {
    mvae.connected = false;
    $("link").classList.remove("on");
    if (reconnects++ < MAX_RECONNECTS) {
      status("disconnected; trying again…", true);
      setTimeout(connect, RECONNECT_MS);
    } else {
      status("cannot reach the server: open the address melodyvae serve printed", true);
    }
  };
}

function send(address, args = []) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ address, args }));
    return true;
  }
  return false;
}

function receive(frame) {
  if (!Array.isArray(frame)) {
    if (frame.hello) welcome(frame.hello);
    return;
  }
  for (const { address, args } of frame) {
    mvae.last[address] = args;
    switch (address) {
      case "/mvae/melody/begin":
        state.building = { id: args[0], bars: args[1], stepsPerBar: args[2], qpm: args[3],
                           notes: [] };
        break;
      case "/mvae/note":
        if (state.building && state.building.id === args[0]) {
          state.building.notes.push({ pitch: args[1], velocity: args[2], start: args[3],
                                      duration: args[4] });
        }
        break;
      case "/mvae/melody/end":
        if (state.building && state.building.id === args[0]) melodyArrived(state.building);
        state.building = null;
        break;
      case "/mvae/z":
        zArrived(args);
        break;
      case "/mvae/error":
        mvae.errors.push(args);
        status(`${args[0] || "server"}: ${args[1]}`, true);
        break;
      default:
        break;
    }
  }
}

function welcome(hello) {
  state.hello = hello;
  mvae.hello = hello;
  mvae.tab = hello.tab;
  mvae.connected = true;
  $("link").classList.add("on");
  $("model").textContent = `${hello.model} · ${hello.bars} bars · latent ${hello.z_dim} · ` +
    `${hello.device}`;
  buildAxes(hello);
  state.stored = {};
  buildCorners(hello.corners);
  status(hello.axes ? "drag on the pad" : `no latent axes: ${hello.axes_problem}`,
         !hello.axes);
  // A fresh client on the server: give it this page's settings, then ask for a melody.
  send("/mvae/temperature", [Number($("temperature").value)]);
  send("/mvae/seed", [Number($("seed").value)]);
  send("/mvae/tempo", [Number($("qpm").value)]);
  refresh();
}

// ------------------------------------------------------------------ melodies and z

function melodyArrived(melody) {
  roll.show(melody);
  const drawnAt = performance.now();
  mvae.melody = melody;
  mvae.melodies += 1;
  if (state.askedAt !== null) {
    const ms = drawnAt - state.askedAt;
    mvae.latencies.push(ms);
    $("latency").textContent = `${ms.toFixed(0)} ms`;
    state.askedAt = null;
  }
  transport.offer(melody);
  const link = $("download");
  link.href = `/melody.mid?token=${encodeURIComponent(token)}&tab=${mvae.tab}&n=${melody.id}`;
  link.download = `melodyvae-${melody.id}.mid`;
  link.classList.remove("disabled");
  window.dispatchEvent(new CustomEvent("mvae:melody", { detail: { melody, drawnAt } }));
}

function zArrived(z) {
  mvae.z = z;
  const axes = state.hello && state.hello.axes;
  if (axes) {
    // The server took the vector whole: coordinates are its projections, amounts 0.
    state.pcs = axes.directions.map((dir, k) => {
      let dot = 0;
      for (let j = 0; j < z.length; j++) dot += dir[j] * (z[j] - axes.mean[j]);
      return axes.std[k] > 0 ? dot / axes.std[k] : dot;
    });
    for (const input of document.querySelectorAll("#sliders input")) setSlider(input, 0);
    showPadAxes();
  }
  if (state.decodeNextZ) {
    state.decodeNextZ = false;
    ask("/mvae/z", z);
  }
}

// Send a request that brings a melody back, noting when (for the latency shown).
function ask(address, args) {
  if (send(address, args)) state.askedAt = performance.now();
}

// Decode the current vector again (after a temperature or seed change).
function refresh() {
  const hello = state.hello;
  if (hello.axes && pad.mode === "axes") {
    ask("/mvae/axis", padPairs(pad.value())); // the coordinates it has: the same vector
  } else if (pad.mode === "corners" && hello.corners.every((c) => state.stored[c])) {
    ask("/mvae/blend", [pad.value().x, pad.value().y]);
  } else {
    state.decodeNextZ = true; // the vector comes back as /mvae/z; decode it then
    send("/mvae/z/get");
  }
}

// ------------------------------------------------------------------ the pad

function buildAxes(hello) {
  const axes = hello.axes;
  const [sx, sy] = [$("axis-x"), $("axis-y")];
  sx.replaceChildren();
  sy.replaceChildren();
  $("sliders").replaceChildren();
  state.pcs = axes ? axes.pcs.map(() => 0) : [];
  // a model without latent axes has no pad axes and no sliders: the pad morphs corners
  for (const element of [sx.parentElement, sy.parentElement, $("attributes-title")]) {
    element.hidden = !axes;
  }
  $("pad-mode").querySelector("option[value=axes]").disabled = !axes;
  if (!axes) {
    $("pad-mode").value = "corners";
    pad.setMode("corners");
    return;
  }
  axes.pcs.forEach((name, k) => {
    sx.append(new Option(name, k, k === 0, k === 0));
    sy.append(new Option(name, k, k === 1, k === 1));
  });
  for (const name of axes.attributes) $("sliders").append(slider(name));
  showPadAxes();
}

function showPadAxes() {
  const axes = state.hello && state.hello.axes;
  if (!axes) return;
  const [ix, iy] = [Number($("axis-x").value), Number($("axis-y").value)];
  pad.labels = { x: axes.pcs[ix], y: axes.pcs[iy] };
  if (pad.mode === "axes") pad.set(state.pcs[ix] || 0, state.pcs[iy] || 0);
}

function padPairs(value) {
  const names = state.hello.axes.pcs;
  const [ix, iy] = [Number($("axis-x").value), Number($("axis-y").value)];
  return ix === iy ? [names[ix], value.x] : [names[ix], value.x, names[iy], value.y];
}

function padMoved(value, t0) {
  if (pad.mode === "axes") {
    if (!state.hello || !state.hello.axes) return;
    const [ix, iy] = [Number($("axis-x").value), Number($("axis-y").value)];
    state.pcs[ix] = value.x;
    state.pcs[iy] = value.y;
    if (send("/mvae/axis", padPairs(value))) state.askedAt = t0;
  } else if (send("/mvae/blend", [value.x, value.y])) {
    state.askedAt = t0;
  }
}

$("axis-x").addEventListener("change", showPadAxes);
$("axis-y").addEventListener("change", showPadAxes);
$("pad-mode").addEventListener("change", () => {
  const mode = $("pad-mode").value;
  pad.setMode(mode);
  if (mode === "axes") showPadAxes();
  const missing = state.hello ? state.hello.corners.filter((c) => !state.stored[c]) : [];
  if (mode === "corners" && missing.length) {
    status(`store the corners first: ${missing.join(", ")} (the buttons below the pad)`, true);
  }
});

// ------------------------------------------------------------------ corner slots

function buildCorners(names) {
  const box = $("corners");
  box.replaceChildren();
  for (const name of names) {
    const corner = document.createElement("div");
    corner.className = "corner";
    corner.dataset.slot = name;
    const picture = document.createElement("canvas");
    const buttons = document.createElement("div");
    buttons.className = "buttons";
    const store = button(`${name} ⤓`, `store the current melody in ${name}`, () => {
      send("/mvae/slot/store", [name]);
      state.stored[name] = mvae.melody;
      corner.classList.add("stored");
      thumbnail(picture, mvae.melody);
    });
    store.dataset.action = "store";
    const recall = button("▶", `go back to ${name}`, () => {
      if (!state.stored[name]) return status(`${name} is empty: store it first`, true);
      ask("/mvae/slot/recall", [name]);
      send("/mvae/z/get");
    });
    recall.dataset.action = "recall";
    buttons.append(store, recall);
    corner.append(picture, buttons);
    box.append(corner);
  }
}

function button(text, title, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.title = title;
  b.addEventListener("click", onclick);
  return b;
}

// ------------------------------------------------------------------ sliders and buttons

function slider(name) {
  const row = document.createElement("label");
  row.className = "slider";
  const input = document.createElement("input");
  Object.assign(input, { type: "range", min: -SLIDER_RANGE, max: SLIDER_RANGE, step: 0.05,
                         value: 0, name });
  input.dataset.axis = name;
  const out = document.createElement("output");
  out.textContent = "0.00";
  input.addEventListener("input", () => {
    out.textContent = Number(input.value).toFixed(2);
    ask("/mvae/axis", [name, Number(input.value)]);
  });
  const text = document.createElement("span");
  text.textContent = name.replaceAll("_", " ");
  row.append(text, input, out);
  return row;
}

function setSlider(input, value) {
  input.value = value;
  input.nextElementSibling.textContent = Number(value).toFixed(2);
}

$("temperature").addEventListener("input", () => {
  const t = Number($("temperature").value);
  $("temperature-value").textContent = t.toFixed(2);
  send("/mvae/temperature", [t]);
  refresh();
});

// A new seed short enough to read and type again (any 0 .. 2^31-1 may be typed)
function freshSeed() {
  return Math.floor(Math.random() * 1000000);
}

function setSeed(seed) {
  $("seed").value = seed;
  send("/mvae/seed", [seed]);
  if (Number($("temperature").value) > 0) refresh();
}

$("seed").addEventListener("change", () => {
  const seed = Math.max(0, Math.min(2147483647, Math.round(Number($("seed").value) || 0)));
  setSeed(seed);
});
$("dice").addEventListener("click", () => setSeed(freshSeed()));

$("sample").addEventListener("click", () => {
  // A new seed, shown: it draws the vector and the decode's notes (temperature > 0)
  const seed = freshSeed();
  $("seed").value = seed;
  send("/mvae/seed", [seed]);
  ask("/mvae/sample", [Number($("temperature").value), seed]);
  send("/mvae/z/get");
});
$("vary").addEventListener("click", () => {
  ask("/mvae/vary", [Number($("vary-amount").value) || 0]);
});

// ------------------------------------------------------------------ dropped files

async function upload(file) {
  const hello = state.hello;
  if (!hello) return;
  if (file.size > hello.limits.upload) {
    return uploadFailed(`${file.name}: larger than ${hello.limits.upload / 1024} KiB`);
  }
  status(`reading ${file.name}…`);
  const url = `/upload?token=${encodeURIComponent(token)}&tab=${mvae.tab}` +
    `&name=${encodeURIComponent(file.name)}`;
  let reply;
  try {
    const response = await fetch(url, { method: "POST", body: file });
    reply = await response.json();
  } catch (e) {
    return uploadFailed(`${file.name}: ${e}`);
  }
  if (reply.error) return uploadFailed(reply.error);
  state.decodeNextZ = true; // its vector comes back as /mvae/z
  state.askedAt = performance.now();
  status(`${reply.name}: ${reply.notes} notes, ${reply.bars} bars (${reply.how})`);
}

function uploadFailed(reason) {
  mvae.errors.push(["upload", reason]);
  status(reason, true);
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const file = e.dataTransfer.files[0];
  if (file) upload(file);
});
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) upload(file);
  $("file").value = "";
});

// ------------------------------------------------------------------ transport

const play = $("play");

function showPlaying(playing) {
  play.textContent = playing ? "■ stop" : "▶ play";
  play.setAttribute("aria-pressed", String(playing));
}

transport.onstop = () => {
  showPlaying(false);
  roll.draw(null);
};

async function togglePlay() {
  if (transport.playing) {
    transport.stop();
    return;
  }
  if (!transport.melody) return status("no melody yet", true);
  await transport.start();
  showPlaying(true);
  requestAnimationFrame(function frame() {
    if (!transport.playing) return;
    roll.draw(transport.position());
    requestAnimationFrame(frame);
  });
}

play.addEventListener("click", togglePlay);
document.addEventListener("keydown", (e) => {
  if (e.key === " " && !["INPUT", "SELECT", "BUTTON"].includes(e.target.tagName)) {
    e.preventDefault();
    togglePlay();
  }
});
$("loop").addEventListener("change", () => { transport.loop = $("loop").checked; });
$("sound").addEventListener("change", () => { transport.sound = $("sound").checked; });
$("qpm").addEventListener("change", () => {
  const [low, high] = state.hello ? state.hello.limits.qpm : [20, 400];
  const qpm = Math.max(low, Math.min(high, Number($("qpm").value) || 120));
  $("qpm").value = qpm;
  transport.setTempo(qpm);
  send("/mvae/tempo", [qpm]);
});

$("download").addEventListener("dragstart", (e) => {
  // Chrome lets a link be dragged out as a file (to the desktop or a DAW)
  const link = $("download");
  e.dataTransfer.setData("DownloadURL", `audio/midi:${link.download}:${link.href}`);
});

// ------------------------------------------------------------------ Web MIDI

$("midi-connect").addEventListener("click", async () => {
  if (!navigator.requestMIDIAccess) {
    $("midi-note").textContent = "this browser has no Web MIDI here (it needs https or localhost)";
    return;
  }
  let access;
  try {
    access = await navigator.requestMIDIAccess();
  } catch (e) {
    $("midi-note").textContent = `MIDI refused: ${e.message || e}`;
    return;
  }
  const select = $("midi-out");
  const list = () => {
    const chosen = select.value;
    select.replaceChildren(new Option("no MIDI output", ""));
    for (const out of access.outputs.values()) select.append(new Option(out.name, out.id));
    select.value = access.outputs.has(chosen) ? chosen : "";
    select.disabled = false;
    $("midi-note").textContent = access.outputs.size ? "" : "no MIDI outputs found";
  };
  list();
  access.onstatechange = list;
  select.onchange = () => {
    transport.midiOut = select.value ? access.outputs.get(select.value) : null;
  };
});

// ------------------------------------------------------------------ status line

let statusTimer = null;

function status(text, error = false) {
  const line = $("status");
  line.textContent = text;
  line.classList.toggle("error", error);
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { line.textContent = ""; }, error ? 8000 : 4000);
}

connect();

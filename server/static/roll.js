// The piano roll: a melody's notes on a pitch x time grid, bar lines, and a playhead.
// A melody here is {id, bars, stepsPerBar, qpm, notes: [{pitch, velocity, start, duration}]}
// with start and duration in beats (quarter notes), as /mvae/note sends them.

export const STEPS_PER_BEAT = 4;

const COLORS = {
  background: "#111318",
  blackKey: "#171a21",
  beat: "#1f232b",
  bar: "#3a3f4b",
  note: "#f2a341",
  noteEdge: "#ffd29a",
  playhead: "#58b4e8",
  empty: "#8b909c",
};

// The pitch range to show: the notes' range with a margin, at least two octaves.
export function pitchRange(notes, minSpan = 24) {
  if (!notes.length) return [60 - minSpan / 2, 60 + minSpan / 2];
  let low = Math.min(...notes.map((n) => n.pitch));
  let high = Math.max(...notes.map((n) => n.pitch));
  const missing = Math.max(0, minSpan - (high - low));
  low -= Math.floor(missing / 2) + 2;
  high += Math.ceil(missing / 2) + 2;
  return [low, high];
}

const BLACK = new Set([1, 3, 6, 8, 10]);

// Draw `melody` on a 2D context of size w x h (device pixels).
export function drawMelody(ctx, w, h, melody, { grid = true } = {}) {
  ctx.fillStyle = COLORS.background;
  ctx.fillRect(0, 0, w, h);
  if (!melody) return;
  const beatsPerBar = melody.stepsPerBar / STEPS_PER_BEAT;
  const totalBeats = melody.bars * beatsPerBar;
  const [low, high] = pitchRange(melody.notes);
  const rows = high - low + 1;
  const rowH = h / rows;
  const x = (beat) => (beat / totalBeats) * w;
  const y = (pitch) => (high - pitch) * rowH;
  if (grid) {
    ctx.fillStyle = COLORS.blackKey;
    for (let p = low; p <= high; p++) {
      if (BLACK.has(((p % 12) + 12) % 12)) ctx.fillRect(0, y(p), w, rowH);
    }
    ctx.fillStyle = COLORS.empty;
    ctx.font = `${Math.max(9, Math.round(Math.min(rowH * 0.9, h / 20)))}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    for (let p = low; p <= high; p++) {
      if (p % 12 === 0) ctx.fillText(`C${p / 12 - 1}`, 3, y(p) + rowH / 2);
    }
    for (let beat = 0; beat <= totalBeats; beat++) {
      const isBar = beat % beatsPerBar === 0;
      ctx.fillStyle = isBar ? COLORS.bar : COLORS.beat;
      const lw = isBar ? Math.max(1, w / 600) : 1;
      ctx.fillRect(Math.min(w - lw, x(beat)), 0, lw, h);
    }
  }
  for (const n of melody.notes) {
    const nx = x(n.start);
    const nw = Math.max(2, x(n.duration) - 1.5);
    const ny = y(n.pitch) + 0.5;
    const nh = Math.max(2, rowH - 1);
    ctx.globalAlpha = 0.55 + 0.45 * (n.velocity / 127);
    ctx.fillStyle = COLORS.note;
    ctx.fillRect(nx, ny, nw, nh);
    ctx.globalAlpha = 1;
    ctx.fillStyle = COLORS.noteEdge;
    ctx.fillRect(nx, ny, Math.min(nw, Math.max(2, w / 400)), nh);
  }
  if (grid && !melody.notes.length) {
    ctx.fillStyle = COLORS.empty;
    ctx.font = `${Math.round(h / 14)}px system-ui, sans-serif`;
    ctx.textAlign = "center";
    ctx.fillText("silence", w / 2, h / 2);
  }
}

// A canvas that shows one melody and, while playing, where the playhead is.
export class Roll {
  constructor(canvas) {
    this.canvas = canvas;
    this.melody = null;
    this.cache = document.createElement("canvas");
    new ResizeObserver(() => this.render()).observe(canvas);
  }

  // Show `melody`; returns once it is drawn.
  show(melody) {
    this.melody = melody;
    this.render();
  }

  render() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.canvas.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    this.cache.width = w;
    this.cache.height = h;
    drawMelody(this.cache.getContext("2d"), w, h, this.melody);
    this.draw(null);
  }

  // Copy the drawn melody to the screen, with a playhead at `beat` (null: none).
  draw(beat) {
    const ctx = this.canvas.getContext("2d");
    ctx.drawImage(this.cache, 0, 0);
    if (beat === null || !this.melody) return;
    const total = (this.melody.bars * this.melody.stepsPerBar) / STEPS_PER_BEAT;
    const px = (beat / total) * this.canvas.width;
    ctx.fillStyle = COLORS.playhead;
    ctx.fillRect(px, 0, Math.max(2, this.canvas.width / 500), this.canvas.height);
  }
}

// A small picture of a melody (the corner slots).
export function thumbnail(canvas, melody) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(canvas.clientWidth * dpr));
  canvas.height = Math.max(1, Math.round(canvas.clientHeight * dpr));
  drawMelody(canvas.getContext("2d"), canvas.width, canvas.height, melody, { grid: false });
}

// The XY pad. In "axes" mode it sets two latent coordinates in standard deviations
// (x to the right, y upwards, each within +-range); in "corners" mode it morphs between
// the four corner slots (A top left, B top right, C bottom left, D bottom right; x and y
// from 0 to 1, y downwards, as /mvae/blend takes them).

const COLORS = {
  background: "#111318",
  grid: "#1f232b",
  axis: "#3a3f4b",
  label: "#8b909c",
  dot: "#f2a341",
  ring: "#ffd29a",
};

export class Pad {
  constructor(canvas, { range = 3, onmove = () => {} } = {}) {
    this.canvas = canvas;
    this.range = range;
    this.onmove = onmove;
    this.mode = "axes";
    this.axes = { x: 0, y: 0 }; // coordinates in axes mode
    this.morph = { x: 0.5, y: 0.5 }; // position in corners mode
    this.labels = { x: "x", y: "y" };
    this.dragging = false;
    canvas.addEventListener("pointerdown", (e) => {
      this.dragging = true;
      try {
        canvas.setPointerCapture(e.pointerId); // keep the drag when it leaves the pad
      } catch {
        // a pointer the browser does not track (a synthetic event): no capture needed
      }
      this.pointer(e);
    });
    canvas.addEventListener("pointermove", (e) => {
      if (this.dragging) this.pointer(e);
    });
    const end = () => { this.dragging = false; };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("keydown", (e) => this.key(e));
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  setMode(mode) {
    this.mode = mode;
    this.draw();
  }

  // Move the dot without telling anyone (the server's state changed).
  set(x, y) {
    const r = this.range;
    if (this.mode === "axes") this.axes = { x: clamp(x, -r, r), y: clamp(y, -r, r) };
    else this.morph = { x: clamp(x, 0, 1), y: clamp(y, 0, 1) };
    this.draw();
  }

  value() {
    return this.mode === "axes" ? { ...this.axes } : { ...this.morph };
  }

  pointer(e) {
    const t0 = performance.now();
    const rect = this.canvas.getBoundingClientRect();
    const u = clamp((e.clientX - rect.left) / rect.width, 0, 1);
    const v = clamp((e.clientY - rect.top) / rect.height, 0, 1);
    this.moveTo(u, v, t0);
  }

  key(e) {
    const step = 0.02;
    const d = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step],
                ArrowDown: [0, step] }[e.key];
    if (!d) return;
    e.preventDefault();
    const [u, v] = this.toUnit();
    this.moveTo(clamp(u + d[0], 0, 1), clamp(v + d[1], 0, 1), performance.now());
  }

  // Unit square position (u right, v down) of the current value.
  toUnit() {
    if (this.mode === "corners") return [this.morph.x, this.morph.y];
    const r = this.range;
    return [(this.axes.x + r) / (2 * r), (r - this.axes.y) / (2 * r)];
  }

  moveTo(u, v, t0) {
    if (this.mode === "corners") {
      this.morph = { x: u, y: v };
    } else {
      const r = this.range;
      this.axes = { x: round3(-r + 2 * r * u), y: round3(r - 2 * r * v) };
    }
    this.draw();
    this.onmove(this.value(), t0);
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * dpr));
    const h = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) {
      c.width = w;
      c.height = h;
    }
    const ctx = c.getContext("2d");
    ctx.fillStyle = COLORS.background;
    ctx.fillRect(0, 0, w, h);
    const font = Math.round(12 * dpr);
    ctx.font = `${font}px system-ui, sans-serif`;
    ctx.fillStyle = COLORS.label;
    if (this.mode === "axes") {
      const r = this.range;
      for (let k = -r; k <= r; k++) {
        ctx.fillStyle = k === 0 ? COLORS.axis : COLORS.grid;
        const x = ((k + r) / (2 * r)) * w;
        const y = ((r - k) / (2 * r)) * h;
        ctx.fillRect(Math.min(w - 1, x), 0, 1, h);
        ctx.fillRect(0, Math.min(h - 1, y), w, 1);
      }
      ctx.fillStyle = COLORS.label;
      ctx.textAlign = "right";
      ctx.fillText(`${this.labels.x} →`, w - 6 * dpr, h / 2 - 6 * dpr);
      ctx.textAlign = "left";
      ctx.fillText(`↑ ${this.labels.y}`, w / 2 + 6 * dpr, font + 4 * dpr);
    } else {
      ctx.fillStyle = COLORS.grid;
      for (let k = 1; k < 4; k++) {
        ctx.fillRect((k * w) / 4, 0, 1, h);
        ctx.fillRect(0, (k * h) / 4, w, 1);
      }
      ctx.fillStyle = COLORS.label;
      const m = 8 * dpr;
      ctx.textAlign = "left";
      ctx.fillText("A", m, font + m / 2);
      ctx.fillText("C", m, h - m);
      ctx.textAlign = "right";
      ctx.fillText("B", w - m, font + m / 2);
      ctx.fillText("D", w - m, h - m);
    }
    const [u, v] = this.toUnit();
    const radius = 9 * dpr;
    ctx.beginPath();
    ctx.arc(u * w, v * h, radius, 0, 2 * Math.PI);
    ctx.fillStyle = COLORS.dot;
    ctx.fill();
    ctx.lineWidth = 2 * dpr;
    ctx.strokeStyle = COLORS.ring;
    ctx.stroke();
  }
}

function clamp(x, lo, hi) {
  return Math.min(hi, Math.max(lo, x));
}

function round3(x) {
  return Math.round(x * 1000) / 1000;
}

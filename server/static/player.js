// Transport: plays the current melody at a tempo, in a loop or once, through a small
// WebAudio synth and/or a Web MIDI output. Notes are scheduled a little ahead on the audio
// clock (a 25 ms timer looks LOOKAHEAD seconds ahead). A new melody offered while playing
// takes over at the next bar line not yet scheduled, at the same place in the bar count,
// as the OSC server's playback does.

import { STEPS_PER_BEAT } from "./roll.js";

const LOOKAHEAD = 0.12; // seconds scheduled ahead of the audio clock
const TICK_MS = 25; // scheduler period
const START_DELAY = 0.06; // seconds from "play" to the first step
const MAX_LOG = 4096; // scheduled notes kept for inspection (window.mvae.scheduled)

function frequency(pitch) {
  return 440 * 2 ** ((pitch - 69) / 12);
}

export class Transport {
  constructor() {
    this.ctx = null;
    this.master = null;
    this.melody = null; // what plays (or will play when started)
    this.pending = null; // takes over at the next bar line
    this.starts = new Map(); // onset step -> note, for this.melody
    this.qpm = 120;
    this.loop = true;
    this.sound = true;
    this.midiOut = null; // a MIDIOutput, or null
    this.midiChannel = 0;
    this.playing = false;
    this.ending = false;
    this.timer = null;
    this.voices = new Set();
    this.scheduled = []; // {pitch, velocity, time, duration, step, melody} per note scheduled
    this.onstop = () => {};
  }

  get secondsPerStep() {
    return 60 / this.qpm / STEPS_PER_BEAT;
  }

  timeOf(step) {
    return this.origin + step * this.secondsPerStep;
  }

  use(melody) {
    this.melody = melody;
    this.starts = new Map(melody.notes.map((n) => [Math.round(n.start * STEPS_PER_BEAT), n]));
  }

  // A new melody: at once when stopped, at the next unscheduled bar line when playing.
  offer(melody) {
    if (!this.playing || !this.melody) this.use(melody);
    else this.pending = melody;
  }

  setTempo(qpm) {
    if (this.playing) {
      const at = this.timeOf(this.nextStep); // the next unscheduled step keeps its time
      this.qpm = qpm;
      this.origin = at - this.nextStep * this.secondsPerStep;
    } else {
      this.qpm = qpm;
    }
  }

  async start() {
    if (this.playing || !this.melody) return;
    if (!this.ctx) {
      this.ctx = new AudioContext({ latencyHint: "interactive" });
      this.master = this.ctx.createGain();
      this.master.gain.value = 0.25;
      this.master.connect(this.ctx.destination);
    }
    if (this.ctx.state !== "running") await this.ctx.resume();
    this.playing = true;
    this.ending = false;
    this.origin = this.ctx.currentTime + START_DELAY;
    this.nextStep = 0;
    this.loopStart = 0;
    this.tick();
    this.timer = setInterval(() => this.tick(), TICK_MS);
  }

  stop() {
    if (!this.playing) return;
    this.playing = false;
    this.ending = false;
    clearInterval(this.timer);
    this.timer = null;
    const now = this.ctx.currentTime;
    for (const v of this.voices) {
      v.amp.gain.cancelScheduledValues(now);
      v.amp.gain.setTargetAtTime(0, now, 0.015);
      v.osc.forEach((o) => o.stop(now + 0.1));
    }
    if (this.midiOut) {
      if (this.midiOut.clear) this.midiOut.clear(); // notes not yet sent
      this.midiOut.send([0xb0 | this.midiChannel, 123, 0]); // all notes off
    }
    if (this.pending) {
      this.use(this.pending);
      this.pending = null;
    }
    this.onstop();
  }

  // Where the playhead is, in beats from the melody's start (null when stopped).
  position() {
    if (!this.playing || !this.melody) return null;
    const total = this.melody.bars * this.melody.stepsPerBar;
    const step = (this.ctx.currentTime - this.origin) / this.secondsPerStep;
    if (step < 0) return 0;
    return (step % total) / STEPS_PER_BEAT; // loops start on multiples of total
  }

  tick() {
    if (!this.playing) return;
    const horizon = this.ctx.currentTime + LOOKAHEAD;
    while (this.playing && !this.ending && this.timeOf(this.nextStep) < horizon) {
      this.scheduleStep(this.nextStep);
      this.nextStep += 1;
    }
  }

  scheduleStep(step) {
    const melody = this.melody;
    const total = melody.bars * melody.stepsPerBar;
    if (step - this.loopStart >= total) {
      if (!this.loop) { // played once: nothing more is scheduled; stop when it has sounded
        this.ending = true;
        const wait = Math.max(0, (this.timeOf(step) - this.ctx.currentTime) * 1000);
        setTimeout(() => this.stop(), wait);
        return;
      }
      this.loopStart += total;
    }
    const position = step - this.loopStart;
    if (this.pending && position % this.pending.stepsPerBar === 0) {
      this.use(this.pending);
      this.pending = null;
    }
    const note = this.starts.get(position);
    if (!note) return;
    const time = this.timeOf(step);
    const duration = note.duration * STEPS_PER_BEAT * this.secondsPerStep;
    if (this.sound) this.voice(time, duration, note.pitch, note.velocity);
    if (this.midiOut) this.midi(time, duration, note.pitch, note.velocity);
    if (this.scheduled.length >= MAX_LOG) this.scheduled.splice(0, MAX_LOG / 2);
    this.scheduled.push({
      pitch: note.pitch, velocity: note.velocity, time, duration, step,
      beat: note.start, melody: this.melody.id,
    });
  }

  voice(time, duration, pitch, velocity) {
    const ctx = this.ctx;
    const f = frequency(pitch);
    const amp = ctx.createGain();
    const filter = ctx.createBiquadFilter();
    filter.type = "lowpass";
    filter.frequency.value = Math.min(9000, f * 7);
    filter.Q.value = 0.7;
    const body = ctx.createOscillator();
    body.type = "triangle";
    body.frequency.value = f;
    const edge = ctx.createOscillator();
    edge.type = "square";
    edge.frequency.value = f;
    const edgeGain = ctx.createGain();
    edgeGain.gain.value = 0.12;
    body.connect(filter);
    edge.connect(edgeGain).connect(filter);
    filter.connect(amp).connect(this.master);
    const peak = 0.25 + 0.75 * (velocity / 127);
    amp.gain.setValueAtTime(0, time);
    amp.gain.linearRampToValueAtTime(peak, time + 0.006);
    amp.gain.setTargetAtTime(peak * 0.55, time + 0.006, 0.12);
    const release = time + Math.max(0.03, duration - 0.01);
    amp.gain.setTargetAtTime(0, release, 0.035);
    const v = { amp, osc: [body, edge] };
    this.voices.add(v);
    for (const o of v.osc) {
      o.start(time);
      o.stop(release + 0.25);
    }
    body.onended = () => {
      this.voices.delete(v);
      amp.disconnect();
    };
  }

  // The performance.now() time at which the audio clock reads `time`.
  performanceTime(time) {
    const ts = this.ctx.getOutputTimestamp ? this.ctx.getOutputTimestamp() : {};
    if (ts.contextTime !== undefined && ts.performanceTime) {
      return ts.performanceTime + (time - ts.contextTime) * 1000;
    }
    return performance.now() + (time - this.ctx.currentTime) * 1000;
  }

  midi(time, duration, pitch, velocity) {
    const on = this.performanceTime(time);
    const ch = this.midiChannel;
    this.midiOut.send([0x90 | ch, pitch, Math.max(1, velocity)], on);
    this.midiOut.send([0x80 | ch, pitch, 0], on + Math.max(5, duration * 1000 - 2));
  }
}

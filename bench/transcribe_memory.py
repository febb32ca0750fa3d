"""Peak memory of ``melodyvae transcribe`` against the length of the recording.

Writes synthetic recordings (a played line: 8th notes of a C major scale at 120 qpm, a
tone with three harmonics and a short attack, 44.1 kHz stereo 16-bit WAV) of each length
in ``--minutes``, runs ``melodyvae transcribe`` on each in its own process and reads that
process's peak RSS (``ru_maxrss`` of the finished child). The slope between the shortest
and the longest is the memory transcription costs per second of sound; the goal is at most
0.5 MB a second.

    python bench/transcribe_memory.py                      # 1 and 10 minutes
    python bench/transcribe_memory.py --minutes 1 5 10

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 44_100
NOTE_S = 0.25  # 8th notes at 120 qpm
SCALE = (60, 62, 64, 65, 67, 69, 71, 72)
BLOCK_S = 10  # seconds synthesized and written at once


def note(pitch: int, rng: np.random.Generator) -> np.ndarray:
    """One note: a tone with three harmonics, 10 ms attack, decaying, a little noise."""
    t = np.arange(int(NOTE_S * RATE)) / RATE
    f = 440.0 * 2 ** ((pitch - 69) / 12)
    tone = sum(np.sin(2 * np.pi * k * f * t) / k for k in (1, 2, 3))
    envelope = np.minimum(1.0, t / 0.01) * np.exp(-3.0 * t)
    return (0.3 * tone * envelope + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def write_recording(path: Path, seconds: float) -> None:
    """``seconds`` of the line as a stereo WAV, written block by block."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    notes = [note(p, rng) for p in SCALE]
    per_block = int(BLOCK_S / NOTE_S)
    total = int(seconds / NOTE_S)
    with sf.SoundFile(str(path), "w", RATE, 2, "PCM_16") as out:
        for first in range(0, total, per_block):
            mono = np.concatenate([notes[i % len(SCALE)]
                                   for i in range(first, min(total, first + per_block))])
            out.write(np.stack([mono, 0.8 * mono], axis=1))


def melodyvae_command() -> list[str]:
    exe = shutil.which("melodyvae") or str(Path(sys.executable).with_name("melodyvae"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "melodyvae.cli"]


def peak_rss_mb(command: list[str]) -> tuple[float, float, str]:
    """Run ``command`` in a child of a fresh helper process; its peak RSS in MB (ru_maxrss
    of that one child), wall seconds and its standard output."""
    helper = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "if p.returncode: sys.exit(p.stderr)\n"
        "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps([kb, wall, p.stdout]))\n"
    )
    out = subprocess.run([sys.executable, "-c", helper, *command], capture_output=True,
                         text=True, check=True)
    kb, wall, stdout = json.loads(out.stdout)
    return kb / 1024.0, float(wall), str(stdout).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--qpm", type=float, default=None,
                        help="pass --qpm to transcribe (default: the tempo is estimated)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in sorted(args.minutes):
            wav = Path(tmp) / f"line-{minutes:g}min.wav"
            write_recording(wav, minutes * 60.0)
            command = [*melodyvae_command(), "transcribe", str(wav), str(Path(tmp) / "o.mid"),
                       "--max-audio-seconds", str(minutes * 60.0 + 1)]
            if args.qpm:
                command += ["--qpm", str(args.qpm)]
            started = time.strftime("%Y-%m-%d %H:%M")
            mb, wall, said = peak_rss_mb(command)
            rows.append({"minutes": minutes, "peak_rss_mb": round(mb, 1),
                         "wall_s": round(wall, 1), "file_mb": round(wav.stat().st_size / 2**20, 1),
                         "said": said, "at": started})
            print(f"{minutes:5g} min ({rows[-1]['file_mb']:7.1f} MB WAV): peak RSS "
                  f"{mb:7.1f} MB, {wall:6.1f} s  | {said}", flush=True)
            wav.unlink()
    result: dict[str, object] = {"rows": rows, "cpus": os.cpu_count()}
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        slope = ((b["peak_rss_mb"] - a["peak_rss_mb"])  # type: ignore[operator]
                 / ((b["minutes"] - a["minutes"]) * 60.0))  # type: ignore[operator]
        result["mb_per_second"] = round(slope, 4)
        print(f"slope: {slope:.3f} MB of peak RSS per second of audio (goal <= 0.5)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

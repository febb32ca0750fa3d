#!/usr/bin/env bash
# Sets up melodyvae and everything its tests need, on Debian/Ubuntu or macOS:
#
#   1. system packages: the real clients the tests drive (liblo's oscsend/oscdump, Pure Data,
#      SuperCollider's sclang, FluidSynth with a General MIDI soundfont, a headless JACK
#      server for the MIDI port tests) and Python's venv module; apt-get on Debian/Ubuntu
#      (as root, or through sudo), Homebrew on macOS (whose MIDI ports are CoreMIDI's, part
#      of the system; PyPI's python-rtmidi for macOS has no JACK, so the MIDI port tests skip);
#   2. a virtual environment, .venv beside this file (Debian and macOS refuse pip installs
#      into the system Python), from the newest python3.1x >= 3.10 found;
#   3. PyTorch: on Linux x86_64 the CPU-only build from PyTorch's own index (about 200 MB;
#      PyPI's Linux build carries CUDA and takes several GB), falling back to PyPI's build
#      when that index cannot be reached; macOS and Linux aarch64 get PyPI's CPU build;
#   4. melodyvae itself, editable, with its dev extras (pytest, ruff, mypy, music21).
#
# Options: --no-system  skip step 1 (no root needed; the tests of missing tools then skip)
#          --cuda       take PyPI's PyTorch build (CUDA on Linux x86_64) instead of CPU-only
# Afterwards: .venv/bin/python -m pytest -q, .venv/bin/melodyvae serve (or
# `source .venv/bin/activate` first and drop the .venv/bin/).
set -euo pipefail
cd "$(dirname "$0")"

system=1
torch_build=cpu
for arg in "$@"; do
    case "$arg" in
        --no-system) system=0 ;;
        --cuda) torch_build=default ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

say() { printf '\n== %s\n' "$*"; }
os="$(uname -s)"
arch="$(uname -m)"

# ---------------------------------------------------------------- 1. system packages
if [ "$system" = 1 ]; then
    if [ "$os" = Linux ] && command -v apt-get >/dev/null; then
        say "Debian packages: liblo-tools puredata-core supercollider-language fluidsynth jackd2 python3-venv chromium chromium-driver"
        sudo=""
        if [ "$(id -u)" != 0 ]; then
            if ! command -v sudo >/dev/null; then
                echo "install.sh: run as root, install sudo, or pass --no-system" >&2
                exit 1
            fi
            sudo=sudo
        fi
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update -q
        $sudo apt-get install -y -q --no-install-recommends liblo-tools puredata-core \
            supercollider-language fluidsynth jackd2 python3 python3-venv chromium \
            chromium-driver
    elif [ "$os" = Darwin ]; then
        if ! command -v brew >/dev/null; then
            echo "install.sh: install Homebrew first (https://brew.sh), or pass --no-system" >&2
            exit 1
        fi
        say "Homebrew: liblo fluid-synth python@3.12, casks pd supercollider"
        brew install liblo fluid-synth python@3.12
        brew install --cask pd supercollider
    else
        echo "install.sh: no apt-get or Homebrew here; install liblo's tools, Pure Data," \
             "SuperCollider, FluidSynth and jackd (JACK 2) yourself, then rerun with --no-system" >&2
        exit 1
    fi
fi

# ---------------------------------------------------------------- 2. the virtual environment
python=""
for candidate in python3.13 python3.12 python3.11 python3.10 python3; do
    if command -v "$candidate" >/dev/null \
        && "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' \
            2>/dev/null; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    echo "install.sh: no Python >= 3.10 with the venv module found (Debian/Ubuntu:" \
         "apt-get install python3-venv; macOS: brew install python@3.12)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    say "virtual environment .venv from $("$python" --version) ($(command -v "$python"))"
    "$python" -m venv .venv
else
    say "virtual environment .venv exists ($(.venv/bin/python --version)); installing into it"
fi
pip=(.venv/bin/python -m pip install -q)

# ---------------------------------------------------------------- 3. PyTorch
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    if [ "$torch_build" = cpu ] && [ "$os" = Linux ] && [ "$arch" = x86_64 ]; then
        say "PyTorch, CPU-only build (download.pytorch.org/whl/cpu)"
        "${pip[@]}" --timeout 20 --retries 1 \
            --index-url https://download.pytorch.org/whl/cpu torch \
            || { say "PyTorch's CPU index failed; PyTorch from PyPI instead"
                 "${pip[@]}" torch; }
    else
        say "PyTorch from PyPI"
        "${pip[@]}" torch
    fi
fi

# ---------------------------------------------------------------- 4. melodyvae
say "melodyvae (editable, with the dev extras)"
"${pip[@]}" -e ".[dev]"

.venv/bin/python - <<'EOF'
import torch

import melodyvae

cuda = torch.version.cuda
build = f"built with CUDA {cuda}" if cuda else "CPU-only build"
print(f"\nmelodyvae {melodyvae.__version__} in .venv; torch {torch.__version__} ({build})")
EOF
echo "next: .venv/bin/python -m pytest -q    then: .venv/bin/melodyvae serve"

#!/usr/bin/env bash
# Installs melodyvae with everything its tests need: the Python package (editable, with the
# dev and folk extras) and the Debian packages of the real clients the tests drive
# (liblo's oscsend/oscdump, Pure Data, SuperCollider's sclang, FluidSynth).
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends liblo-tools puredata-core \
    supercollider-language fluidsynth jackd2
python -m pip install -q -e ".[dev]"

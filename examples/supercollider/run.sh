#!/bin/sh
# Starts the SuperCollider example from a terminal, as an ordinary user or as root:
#
#   examples/supercollider/run.sh                the window, with sound (boots scsynth)
#   examples/supercollider/run.sh --headless     no window, no sound: notes are posted
#
# More options: --port N, --host H (the server; default 127.0.0.1 9000). Ctrl-C quits.
# sclang loads Qt's web engine (Chromium), which will not start as root with its sandbox on,
# so as root the sandbox is turned off (QTWEBENGINE_DISABLE_SANDBOX=1); the same goes for the
# IDE: `QTWEBENGINE_DISABLE_SANDBOX=1 scide`. With no screen (Linux, $DISPLAY and
# $WAYLAND_DISPLAY unset) Qt draws offscreen and the example runs headless.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
while [ $# -gt 0 ]; do
    case "$1" in
        --headless) export MELODYVAE_HEADLESS=1 ;;
        --port) export MELODYVAE_PORT="$2"; shift ;;
        --host) export MELODYVAE_HOST="$2"; shift ;;
        *) echo "run.sh: unknown option $1 (--headless, --port N, --host H)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$(id -u)" = 0 ]; then
    export QTWEBENGINE_DISABLE_SANDBOX=1
fi
if [ "$(uname -s)" = Linux ] && [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}" MELODYVAE_HEADLESS=1
fi
sclang="$(command -v sclang || true)"
if [ -z "$sclang" ] && [ -x /Applications/SuperCollider.app/Contents/MacOS/sclang ]; then
    sclang=/Applications/SuperCollider.app/Contents/MacOS/sclang
fi
if [ -z "$sclang" ]; then
    echo "run.sh: sclang not found (Debian: apt-get install supercollider-language;" \
         "macOS: brew install --cask supercollider)" >&2
    exit 1
fi
exec "$sclang" "$here/melodyvae.scd"

#!/usr/bin/env bash
# The browser tests drive Debian's chromium (Playwright's own browser builds cannot be
# downloaded here: only package registries are reachable). Installs it once; does nothing
# when it is already there. A failed install fails `make test`: browser tests never skip.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "chromium.sh: $CHROMIUM is missing and installing it needs root (or sudo)." >&2
    exit 1
fi

echo "chromium.sh: installing Debian's chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
# Wait for a package manager run by someone else on this machine instead of failing at once.
lock_wait=(-o DPkg::Lock::Timeout=300)
"${as_root[@]}" apt-get "${lock_wait[@]}" update -qq
# A font of its own, so text (and the overflow checks' widths) look the same on any machine.
"${as_root[@]}" apt-get "${lock_wait[@]}" install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null

if [ ! -x "$CHROMIUM" ]; then
    echo "chromium.sh: the chromium package did not install $CHROMIUM." >&2
    exit 1
fi

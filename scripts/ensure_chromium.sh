#!/usr/bin/env bash
# Make sure a headless Chromium is available for the dashboard's browser test.
# Idempotent: returns at once when it is already installed. Installs Debian's `chromium` package
# with apt-get otherwise (about 25 s); without apt-get (or without root) it fails with a message
# saying what to install. Prints the browser's path on success.
set -euo pipefail

for candidate in "${STEEL_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then
        echo "$candidate"
        exit 0
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: Chromium is not installed and apt-get is unavailable;" \
         "install Chromium and set STEEL_CHROMIUM=/path/to/chromium" >&2
    exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO="sudo -n"
else
    SUDO=""
fi
echo "ensure_chromium: installing Debian's chromium package" >&2
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } >&2; then
    echo "ensure_chromium: apt-get could not install chromium (no root or no network?);" \
         "install it by hand or set STEEL_CHROMIUM=/path/to/chromium" >&2
    exit 1
fi
if [[ ! -x /usr/bin/chromium ]]; then
    echo "ensure_chromium: chromium installed but /usr/bin/chromium is missing" >&2
    exit 1
fi
echo /usr/bin/chromium

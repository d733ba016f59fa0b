#!/usr/bin/env bash
# Installs Debian's chromium for the leaderboard's real-browser test (tests/leaderboard/test_browser.py).
# playwright drives it through executable_path=/usr/bin/chromium; 'playwright install' is not used.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || true)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium
/usr/bin/chromium --version

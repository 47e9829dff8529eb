#!/usr/bin/env bash
# Fetch xterm.js and its fit addon (versions pinned in web-assets/package-lock.json)
# with npm and put the files the web joiner page loads into
# src/pairpod/web/static/vendor/ (git-ignored). Idempotent: does nothing when
# the files are there for this lock file. Without npm it says so and exits 0:
# the gateway runs without them (link pages then say the files are missing).
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=src/pairpod/web/static/vendor
stamp="$vendor/.lock-$(sha256sum web-assets/package-lock.json | cut -c1-16)"
[ -e "$stamp" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "web-assets: npm is missing: web joiner pages will say the terminal is unavailable (apt-get install npm)" >&2
  exit 0
fi
npm ci --prefix web-assets --no-audit --no-fund --loglevel=error >/dev/null
rm -rf "$vendor"
mkdir -p "$vendor"
cp web-assets/node_modules/@xterm/xterm/lib/xterm.js \
   web-assets/node_modules/@xterm/xterm/css/xterm.css \
   web-assets/node_modules/@xterm/addon-fit/lib/addon-fit.js \
   web-assets/node_modules/@xterm/xterm/LICENSE "$vendor/"
touch "$stamp"
echo "web-assets: xterm.js in $vendor"

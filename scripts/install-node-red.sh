#!/usr/bin/env bash
# Install a pinned Node-RED into .cache/node-red (repo-local, git-ignored) for the Node-RED end-to-end
# test (tests/e2e/test_nodered_e2e.py). Idempotent: returns at once when that version is already there.
#
# - npm missing: prints why and exits 0 (the test then skips with the reason).
# - npm present but the install fails: exits non-zero (a broken install must not hide as a skip).
#
# Node-RED 5 needs Node.js >= 22; 4.1.x runs on Node.js >= 18.5 (Debian 12 ships 18, this machine 20).
# Override with NODE_RED_VERSION / NODE_RED_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

version="${NODE_RED_VERSION:-4.1.8}"
prefix="${NODE_RED_DIR:-.cache/node-red}"
installed="$prefix/node_modules/node-red/package.json"

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "install-node-red: npm/node not found: skipping (the Node-RED end-to-end test will be skipped)"
  exit 0
fi

# Already installed at the pinned version: nothing to do (no network, well under a second).
if [ -f "$installed" ] && [ -x "$prefix/node_modules/.bin/node-red" ] \
  && node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
       "$(realpath "$installed")" "$version"; then
  echo "install-node-red: node-red $version already in $prefix"
  exit 0
fi

echo "install-node-red: installing node-red@$version into $prefix"
mkdir -p "$prefix"
# A package.json of its own keeps npm from walking up to some other project; no prompts, no audit/fund
# network calls, no progress bar in CI logs.
[ -f "$prefix/package.json" ] || printf '{"name": "amsd-node-red-test-runtime", "private": true}\n' >"$prefix/package.json"
started=$(date +%s)
CI=true npm install --prefix "$prefix" --no-audit --no-fund --no-progress --loglevel=error \
  --omit=dev --save-exact "node-red@$version" </dev/null
echo "install-node-red: node-red $version installed in $(( $(date +%s) - started )) s"

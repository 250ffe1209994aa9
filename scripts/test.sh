#!/usr/bin/env bash
# Install everything the test suite needs on Debian / Raspberry Pi OS, then run all checks and tests:
# ruff, mypy --strict, pytest (unit, property-based, conformance corpus, end-to-end with Mosquitto).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || missing+=(mosquitto)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# atheris (coverage-guided fuzzing) ships wheels for x86_64 Linux only; elsewhere the fuzz smoke test
# runs amsd's built-in mutator alone and says so.
if [ "$(uname -m)" = x86_64 ]; then .venv/bin/python -m pip install -q --disable-pip-version-check atheris; fi
bash scripts/install-node-red.sh  # Node-RED for its e2e test; a no-op without npm (the test then skips)

echo "== ruff"; .venv/bin/ruff check amsd tests bench
echo "== mypy --strict"; .venv/bin/mypy
echo "== pytest"; exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

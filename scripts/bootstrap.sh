#!/usr/bin/env bash
# Create the virtual environment and install scepd with its test dependencies.
# On a fresh Debian machine python3-venv may be missing: install it when we can.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

if ! command -v "$PYTHON" >/dev/null; then
  echo "bootstrap: installing python3 (Debian package)" >&2
  as_root apt-get update -q && as_root apt-get install -y -q python3 python3-venv
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "bootstrap: scepd needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version)" >&2; exit 2; }
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "bootstrap: installing python3-venv (Debian package)" >&2
  as_root apt-get update -q && as_root apt-get install -y -q python3-venv
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
# pkcs11: the tests drive keys in a SoftHSM2 token through it.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,pkcs11]'
echo "bootstrap: scepd installed in $VENV" >&2

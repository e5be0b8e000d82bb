#!/usr/bin/env bash
# Installs the external authorization server that tests/external_as.rs runs: Authlib's
# RFC 7523 JWT bearer grant in a small Flask app (tests/external/authlib_as.py), into a
# virtualenv under target/. Idempotent; needs python3 with venv (installed from Debian
# if missing) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/external-as
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import authlib, flask" 2>/dev/null; then
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  'Authlib==1.9.9' 'Flask==3.1.3' 'Werkzeug==3.1.9' 'joserfc==1.8.0'
echo "external authorization server installed in $VENV"

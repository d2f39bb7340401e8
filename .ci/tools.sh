#!/usr/bin/env bash
# Installs the third-party checkers CI runs against the API into target/ci-tools (kept
# out of git, reused by later runs in the same clone): redocly (npm) lints the OpenAPI
# document, schemathesis (PyPI) fuzzes the running server against it. Versions are
# pinned. Prints the directory. Under CI=true a failed install fails the run; outside
# CI it prints why and exits 3, and callers skip the check with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."

REDOCLY_VERSION=2.77.0
SCHEMATHESIS_VERSION=4.32.5
dir="$PWD/target/ci-tools"
mkdir -p "$dir"

fail() {
  echo "ci-tools: $1" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  exit 3
}

if [ "$("$dir/redocly/node_modules/.bin/redocly" --version 2>/dev/null | tail -n 1)" != "$REDOCLY_VERSION" ]; then
  command -v npm >/dev/null || fail "npm is not installed (apt-get install -y npm)"
  npm install --silent --no-audit --no-fund --prefix "$dir/redocly" "@redocly/cli@$REDOCLY_VERSION" >&2 \
    || fail "npm could not install @redocly/cli@$REDOCLY_VERSION"
fi

if ! "$dir/venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  command -v python3 >/dev/null || fail "python3 is not installed"
  python3 -m venv "$dir/venv" >&2 || fail "python3 -m venv failed (apt-get install -y python3-venv)"
  "$dir/venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION" >&2 \
    || fail "pip could not install schemathesis==$SCHEMATHESIS_VERSION"
fi

echo "$dir"

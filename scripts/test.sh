#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, real FUSE mounts included.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Test-only system packages: a real browser for the HTML report test.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
.venv/bin/ruff check ciartfs tests scripts
.venv/bin/mypy ciartfs scripts  # settings and strictness: [tool.mypy] in pyproject.toml
exec .venv/bin/python -m pytest "$@"

#!/bin/bash
# Set up, then run every test tier: unit (no root), sandbox (root: loop devices, namespaces).
# The vm tier (QEMU) has no tests yet; its marker is reserved for it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pytest -m "not vm" -ra "$@" tests

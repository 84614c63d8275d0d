#!/bin/bash
# Set up, then run every test tier: unit (no root), sandbox (root: loop devices, namespaces) and vm
# (QEMU under TCG booting Debian's kernel with our firmware: the x86 upgrade cycle, about 1.5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pytest -m "" -ra "$@" tests

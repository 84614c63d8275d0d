#!/bin/bash
# Set up, then run every test tier: unit (no root), sandbox (root: loop devices, namespaces) and vm
# (QEMU under TCG booting Debian's kernel with our firmware: x86, NOR and UBI upgrade cycles, power cuts,
# failsafe, watchdog; about 30 minutes). --durations prints every slow test's time (each vm test).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pytest -m "" -ra --durations=40 "$@" tests

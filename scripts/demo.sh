#!/bin/bash
# Set up, then run a full upgrade cycle with the config kept on the built-in demo device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m sandbox.demo "$@"

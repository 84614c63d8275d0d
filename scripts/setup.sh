#!/bin/bash
# Install what the project needs on a fresh Debian 12 machine (run as root): Debian's tools for
# building and booting the sandbox device, and a virtualenv with the project and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(squashfs-tools busybox-static e2fsprogs util-linux fdisk shellcheck signify-openbsd openssl qemu-system-x86 kmod
          mtd-utils swupdate libubootenv-tool cpio dropbear-bin)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages that MuJoCo needs to render LIBERO offscreen without a GPU
# (Mesa's EGL and OSMesa back ends). Idempotent: does nothing when every package is present, and
# only prints the apt-get command when it is not run as root.
set -euo pipefail

packages=(libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libglx-mesa0 libosmesa6)

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "Mesa rendering packages already installed."
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "Missing packages: ${missing[*]}"
    echo "Not root: run  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    exit 0
fi

apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"

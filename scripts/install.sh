#!/usr/bin/env bash
# Installs what the project needs into the current Python environment: Mesa for LIBERO's offscreen
# rendering (Debian packages, when root), the CPU build of torch 2.13.0 first (so that no other package
# pulls a CUDA build), then the pinned requirements. Idempotent: a second run changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_system_deps.sh
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -r requirements.txt

#!/usr/bin/env bash
# Installs what the project needs into the current Python environment: Mesa for LIBERO's offscreen
# rendering (Debian packages, when root), torch 2.13.0 first (so that no other package pulls another
# build), then the pinned requirements. Idempotent: a second run changes nothing.
#
#   WORLDVLA_TORCH=auto (default) | cpu | cuda
#       auto: cuda when `nvidia-smi` sees a GPU, cpu otherwise.
#       cpu:  PyTorch's CPU wheel index is added (TORCH_INDEX_URL, default
#             https://download.pytorch.org/whl/cpu), so that pip takes the CPU build (about 200 MB)
#             rather than PyPI's default CUDA build (about 530 MB plus several GB of NVIDIA wheels).
#             Where that index cannot be reached, the configured package sources are used as they are.
#       cuda: PyPI's default build (or TORCH_INDEX_URL, e.g. https://download.pytorch.org/whl/cu128).
# The build installed is printed at the end; asking for cpu and getting a CUDA build is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_system_deps.sh

variant="${WORLDVLA_TORCH:-auto}"
if [ "$variant" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then variant=cuda; else variant=cpu; fi
fi
case "$variant" in
    cpu) index_url="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;;
    cuda) index_url="${TORCH_INDEX_URL:-}" ;;
    *) echo "WORLDVLA_TORCH must be auto, cpu or cuda, got '$variant'" >&2; exit 2 ;;
esac

pip_install=(python -m pip install --quiet --disable-pip-version-check)
if python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.13.0' else 1)" 2>/dev/null; then
    echo "torch 2.13.0 already installed."
elif [ -n "$index_url" ] && python - "$index_url" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)
except Exception:
    sys.exit(1)
EOF
then
    echo "torch 2.13.0 ($variant) from $index_url"
    "${pip_install[@]}" --extra-index-url "$index_url" torch==2.13.0
else
    [ -n "$index_url" ] && echo "$index_url cannot be reached: torch 2.13.0 from the configured package sources"
    "${pip_install[@]}" torch==2.13.0
fi
"${pip_install[@]}" -r requirements.txt

python - "$variant" <<'EOF'
import sys
import torch
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
print(f"torch {torch.__version__}: {build} build; CUDA available: {torch.cuda.is_available()}")
if sys.argv[1] == "cpu" and torch.version.cuda:
    sys.exit("asked for the CPU build (WORLDVLA_TORCH=cpu) but a CUDA build is installed: "
             "pip uninstall torch, then rerun with TORCH_INDEX_URL set to PyTorch's CPU index")
EOF

#!/usr/bin/env bash
# Set up halo_ray in ./.venv on a fresh machine (idempotent).
# CPU machines get the CPU build of torch first: a bare torch requirement would pull a
# multi-GB CUDA build. Machines with an NVIDIA driver let pip pick torch from the range.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" "torch>=2.2,<3"
  else
    "${PIP[@]}" "torch==2.13.0"
  fi
fi
"${PIP[@]}" -e ".[dev]"
echo "halo_ray installed in $(pwd)/.venv  (activate: . .venv/bin/activate)"

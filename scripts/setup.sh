#!/usr/bin/env bash
# One-time (idempotent) setup of a fresh machine: Debian packages the tests and demo use,
# then a virtual environment in .venv with the project installed editable.
# Usage: bash scripts/setup.sh        (safe to rerun; skips what is already done)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(chromium dpkg-dev)
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    missing=()
    for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "[setup] apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp_now=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f .setup-stamp ] && [ "$(cat .setup-stamp)" = "$stamp_now" ]; then
    echo "[setup] .venv is up to date"
    exit 0
fi
echo "[setup] creating .venv with $($PYTHON --version)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first and pinned: on CPU machines pip finds the 2.13.0 CPU build on disk; letting a
# dependency resolve 'torch' on its own would pull a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
.venv/bin/pip install -q -e '.[dev]'
echo "$stamp_now" > .setup-stamp
echo "[setup] done"

#!/usr/bin/env bash
# Set up a fresh machine: system packages the demo and tests use, then the venv at .venv.
# Idempotent and quick when nothing changed (a stamp keyed to pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need_apt[*]} (Debian packages)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.elastic-setup-$(cat pyproject.toml serving/*.c | sha256sum | cut -c1-16)  # the C source rebuilds too
if [ ! -e "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[dev,ray]"
  rm -f .venv/.elastic-setup-*
  touch "$stamp"
fi

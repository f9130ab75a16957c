#!/usr/bin/env bash
# The demo, from a fresh clone: set up .venv, pretrain an IWM on CIFAR-10 on the CPU, report.
# Data: CIFAR-10 from $IWM_CIFAR10, else ~/.cache/iwm, else downloaded there (about 170 MB);
# extra arguments go to `iwm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# the project's own machines are offline and keep a copy beside the checkout
if [[ -z ${IWM_CIFAR10:-} && -f ../shared/data/cifar10-jpg.tar.gz ]]; then
  export IWM_CIFAR10=$PWD/../shared/data/cifar10-jpg.tar.gz
fi
exec .venv/bin/iwm demo "$@"

#!/usr/bin/env bash
# The demo, from a fresh clone: set up .venv, pretrain an IWM on CIFAR-10 on the CPU, report.
# Data: $IWM_CIFAR10 or ../shared/data/cifar10-jpg.tar.gz; extra arguments go to `iwm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/iwm demo "$@"

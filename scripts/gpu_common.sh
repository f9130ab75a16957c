# Shared by gpu_check.sh and gpu_study.sh (sourced, not run): the machine's python with this
# checkout's src/ first on the path (no venv, no pip install, no network), an output folder
# ($OUT/<name> when $OUT is set, else runs/<name>) holding a log of everything, and a check that
# every package iwm imports is there, which stops the script with one clear line if one is not.

gpu_setup() {  # gpu_setup NAME DRY(0|1)
  cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
  PY=${PYTHON:-python3}
  DEST=${OUT:+$OUT/$1}
  DEST=${DEST:-runs/$1}
  mkdir -p "$DEST"
  DEST=$(cd "$DEST" && pwd)
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  exec > >(tee "$DEST/$1.log") 2>&1
  T0=$(date +%s)
  echo "== $1 $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "== output: $DEST"
  local missing
  missing=$("$PY" - <<'EOF'
import importlib.util
names = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "safetensors": "safetensors",
         "numpy": "numpy", "PIL": "pillow", "yaml": "pyyaml", "tqdm": "tqdm", "matplotlib": "matplotlib",
         "tensorboard": "tensorboard", "pytest": "pytest"}
print(" ".join(pkg for mod, pkg in names.items() if importlib.util.find_spec(mod) is None))
EOF
)
  if [[ -n $missing ]]; then
    echo "iwm: error: $PY lacks the Python packages: $missing (install them, offline from wheels, or set PYTHON=...)"
    exit 3
  fi
  "$PY" - "$2" <<'EOF' || exit 3
import platform, sys
import timm, torch, torchvision
print(f"== python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"timm {timm.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"== GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, CUDA {torch.version.cuda}")
elif sys.argv[1] == "1":
    print("== no GPU: dry run on the CPU")
else:
    sys.exit("iwm: error: torch sees no CUDA GPU; on a CPU, run with --dry-run")
EOF
}

elapsed() { echo $(( $(date +%s) - T0 )); }

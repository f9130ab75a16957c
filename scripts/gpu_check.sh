#!/usr/bin/env bash
# The GPU check (issue 13) on one CUDA GPU, in under 8 minutes: the CUDA tests (pytest -m cuda),
# then benchmarks/pretrain_throughput.py --gpu at ViT-S/16 and ViT-B/16, 224 px (images/s, MFU
# against the bf16 peak measured on the same GPU, augmentation + masks share, peak memory), eager
# and with run.compile, and the input pipeline (loader vs data.on_device). It writes
# benchmarks_gpu.md, the section to paste into docs/benchmarks.md, beside its log and JSON.
#
#   bash scripts/gpu_check.sh             # on the GPU machine: output in $OUT/gpu_check, else runs/gpu_check
#   bash scripts/gpu_check.sh --dry-run   # on a CPU: every step, tiny sizes, the CUDA tests on the CPU
#
# Uses the machine's python3 (PYTHON=... for another) with this checkout's src/ on the path.
set -uo pipefail
DRY=0
[[ ${1:-} == --dry-run ]] && DRY=1
source "$(dirname "$0")/gpu_common.sh"
gpu_setup gpu_check "$DRY"
BUDGET_S=${BUDGET_S:-450}  # leaves a minute of the 8 for the machine's start and the copies
T_TESTS=240
T_EAGER=150

if ((DRY)); then  # a CPU is slow at this (compilation above all): no time limits
  export IWM_CUDA_DRY_RUN=1
  BUDGET_S=100000 T_TESTS=100000 T_EAGER=100000
  BENCH=(--device cpu --steps 1 --set data.image_size=64 model.embed_dim=64 model.depth=1 model.num_heads=2
         predictor.depth=1 predictor.width=64 data.batch_size=8)
  INPUT=(--input-steps 1 --input-images 64 --input-batch 8)
else
  BENCH=(--steps 8)
  INPUT=()
fi

echo "== 1/3 CUDA tests: pytest -m cuda ($(elapsed) s)"
timeout -k 10 "$T_TESTS" "$PY" -m pytest -m cuda tests/test_cuda.py -vv -rs -p no:cacheprovider 2>&1 | tee "$DEST/pytest_cuda.txt"
TESTS=$?
SUMMARY=$(tail -n 1 "$DEST/pytest_cuda.txt")

echo "== 2/3 benchmark, eager, with the input pipeline ($(elapsed) s)"
timeout -k 10 "$T_EAGER" "$PY" benchmarks/pretrain_throughput.py --gpu "${BENCH[@]}" "${INPUT[@]}" \
  --json "$DEST/bench_eager.json" --write "$DEST/bench_eager.md"
EAGER=$?

LEFT=$((BUDGET_S - $(elapsed)))
echo "== 3/3 benchmark with run.compile=true, ${LEFT} s left ($(elapsed) s)"
COMPILED=1
if ((LEFT > 60)); then
  timeout -k 10 "$LEFT" "$PY" benchmarks/pretrain_throughput.py --gpu --compile-only "${BENCH[@]}" --input-steps 0 \
    --json "$DEST/bench_compile.json" --write "$DEST/bench_compile.md"
  COMPILED=$?
fi

{
  echo "## GPU: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (dry run on the CPU)")')"
  echo
  echo "Written by \`bash scripts/gpu_check.sh\` on $(date -u '+%Y-%m-%d'), commit $(git describe --always --dirty 2>/dev/null || echo unknown)."
  echo "CUDA tests (\`pytest -m cuda tests/test_cuda.py\`): $SUMMARY"
  cat "$DEST/bench_eager.md" 2>/dev/null || echo "(the eager benchmark failed: exit $EAGER, see gpu_check.log)"
  if [[ -f $DEST/bench_compile.md ]]; then cat "$DEST/bench_compile.md"
  else echo; echo "(no run.compile figures: exit $COMPILED, ${LEFT} s were left; see gpu_check.log)"; fi
} >"$DEST/benchmarks_gpu.md"
rm -f "$DEST/bench_eager.md" "$DEST/bench_compile.md"
echo "== wrote $DEST/benchmarks_gpu.md in $(elapsed) s: tests exit $TESTS, eager benchmark $EAGER, compiled $COMPILED"
cat "$DEST/benchmarks_gpu.md"
exit $((TESTS || EAGER))

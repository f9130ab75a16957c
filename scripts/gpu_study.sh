#!/usr/bin/env bash
# The world-model study (issue 14; the paper's Tables 1-2) on one GPU in about 10 minutes: the 9
# runs (conditioning none / sequence / feature; strength 0.5 / 1.0 x predictor depth 1 / 2 / 4;
# I-JEPA) with data.on_device=true and bf16, as many epochs each as fit the budget (from a timed
# warm-up run and a timed evaluation of it), MRR on a 256-entry bank, kNN and the raw-pixel kNN.
# It writes world_model_gpu.md (a "GPU run" section for docs/results/world_model.md), its JSON
# and plot, the warm-up's figures and a log.
#
#   IWM_CIFAR10=/data/cifar10-jpg.tar.gz bash scripts/gpu_study.sh   # $OUT/gpu_study, else runs/gpu_study
#   bash scripts/gpu_study.sh --dry-run                               # on a CPU: synthetic data, tiny model
#
# Knobs (environment): BUDGET_S (570: seconds for the whole script), BATCH (512), COMPILE (0),
# EPOCHS (a count instead of the estimate; give the first count again to rerun on the same machine
# and reuse its finished runs), MIN_EPOCHS (30: fewer is reported as short of the aim).
# Data: $IWM_CIFAR10, else shared/data/ in the checkout, else ../shared/data/ beside it.
set -uo pipefail
DRY=0
[[ ${1:-} == --dry-run ]] && DRY=1
source "$(dirname "$0")/gpu_common.sh"
gpu_setup gpu_study "$DRY"
BUDGET_S=${BUDGET_S:-570}
BATCH=${BATCH:-512}
COMPILE=${COMPILE:-0}
MIN_EPOCHS=${MIN_EPOCHS:-30}
RUNS=${RUNS:-/tmp/iwm-gpu-study}  # checkpoints stay on the machine; only the page and its files come back

if ((DRY)); then
  DEVICE=cpu
  MRR=(--mrr-images 2 --mrr-bank 8)
  COMMON=(data.dataset=synthetic data.synthetic_size=128 data.image_size=16 model.patch_size=4 model.embed_dim=32
          model.depth=2 model.num_heads=2 predictor.width=32 predictor.num_heads=2 mask.min_context=2
          mask.num_targets=2 eval.knn_train=64 eval.knn_test=32 data.batch_size=32 run.precision=fp32)
  WARM=8
  BATCH=32
  MAX_EPOCHS=1
  MIN_EPOCHS=1
else
  DEVICE=cuda
  MRR=(--mrr-images 128 --mrr-bank 256)
  DATA=${IWM_CIFAR10:-}
  for cand in shared/data/cifar10-jpg.tar.gz ../shared/data/cifar10-jpg.tar.gz; do
    [[ -z $DATA && -e $cand ]] && DATA=$cand
  done
  if [[ -z $DATA || ! -e $DATA ]]; then
    echo "iwm: error: no CIFAR-10 copy: set IWM_CIFAR10 to cifar10-jpg.tar.gz (or put it in shared/data/)"
    exit 2
  fi
  COMMON=(data.path="$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")" data.batch_size="$BATCH"
          run.precision=bf16)
  WARM=120
  MAX_EPOCHS=1000
fi
# on a GPU: one padded context length per batch (length groups would run the model 4 times, each
# after a host sync), no training-health checks inside the runs (the study measures each run at
# its end), no periodic checkpoints
COMMON+=(data.on_device=true run.compile=$([[ $COMPILE == 1 ]] && echo true || echo false) run.progress=false
         mask.length_groups=1 eval.every=0 run.log_every=20 run.ckpt_every=1000000 data.cache_dir="$RUNS/cache")
rm -rf "$RUNS/warmup"

echo "== 1/2 warm-up: $WARM steps of the depth-4 run, timed, and its evaluation, timed ($(elapsed) s)"
EPOCHS_FIT=$("$PY" - "$RUNS" "$WARM" "$DEVICE" "$DEST/warmup.json" "$BUDGET_S" "$(elapsed)" "$MAX_EPOCHS" \
  "${MRR[1]}" "${MRR[3]}" "${COMMON[@]}" <<'EOF'
import json, math, sys, time
from pathlib import Path

import torch

from iwm.eval.knn import knn_eval
from iwm.eval.pixels import RawPixels
from iwm.studies import grid
from iwm.studies.world_model import GRID, measure

runs, warm, device, out, budget, spent, max_epochs, images, bank, *common = sys.argv[1:]
warm, budget, spent, max_epochs, images, bank = int(warm), float(budget), float(spent), int(max_epochs), int(images), int(bank)
dev = torch.device(device)
t_start = time.perf_counter()
run = next(r for r in GRID if r.name == "strong_d4")  # among the slowest: depth 4, strong transformations
cfg = grid.run_config(run._replace(name="warmup"), Path(runs), warm, common, device)
t0 = time.perf_counter()
grid.pretrain(cfg)
train_s = time.perf_counter() - t0
rate = json.loads((Path(cfg.run.out_dir) / "metrics.jsonl").read_text().splitlines()[-1])["images_per_s"]
fixed_s = max(0.0, train_s - warm * cfg.data.batch_size / rate)  # start-up, compilation, the final save
t0 = time.perf_counter()
measure(run, cfg, images, bank, dev)
eval_s = time.perf_counter() - t0
t0 = time.perf_counter()
knn_eval(RawPixels.of(cfg), cfg, dev)  # the study's raw-pixel reference, once
pixel_s = time.perf_counter() - t0
spe = grid.steps_per_epoch(cfg)
epoch_s = spe * cfg.data.batch_size / rate
# the 9 runs: 3 weak ones rank twice (their own bank and the strong one), hence 1.4 x the evaluation
left = budget - spent - (time.perf_counter() - t_start) - 30  # 30 s for the page, the plot, slack
fit = math.floor((left - 9 * (fixed_s + 1.4 * eval_s) - pixel_s) / (9 * epoch_s))
epochs = max(1, min(fit, max_epochs))
rec = {"device": str(dev), "batch": cfg.data.batch_size, "warmup_steps": warm, "images_per_s": rate,
       "steps_per_epoch": spe, "epoch_s": epoch_s, "fixed_s_per_run": fixed_s, "eval_s_per_run": eval_s,
       "pixel_knn_s": pixel_s, "budget_s": budget, "left_s": left, "epochs_fit": fit, "epochs": epochs}
Path(out).write_text(json.dumps(rec, indent=2))
print(json.dumps(rec), file=sys.stderr)
print(epochs)
EOF
)
[[ $EPOCHS_FIT =~ ^[0-9]+$ ]] || { echo "iwm: error: the warm-up failed (see above)"; exit 4; }
EPOCHS=${EPOCHS:-$EPOCHS_FIT}
if ((EPOCHS < MIN_EPOCHS)); then
  echo "== NOTE: $EPOCHS epochs per run fit the budget, short of the $MIN_EPOCHS aimed at (raise BATCH, or BUDGET_S)"
fi

echo "== 2/2 the study: 9 runs x $EPOCHS epochs, batch ${BATCH} ($(elapsed) s)"
"$PY" -m iwm.cli study world-model --epochs "$EPOCHS" "${MRR[@]}" --runs-dir "$RUNS" \
  --out "$DEST/world_model_gpu.md" --device "$DEVICE" --section "GPU run" "${COMMON[@]}"
STATUS=$?
echo "== done in $(elapsed) s (budget $BUDGET_S s), exit $STATUS"
exit $STATUS

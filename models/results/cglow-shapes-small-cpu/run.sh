#!/usr/bin/env bash
# The CGlow ablation of the paper's Table I on Stochastic Movement (32x32, 4-frame clips, label = the shape), one
# run per variant, one after another. Resumable: run it again and each run continues from its checkpoint.
# Runs go to runs/cglow-<variant>; their metrics and samples are copied here.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-.venv/bin/python}
HERE=models/results/cglow-shapes-small-cpu
STEPS=${STEPS:-3000}
for variant in init prev_frame state state_label; do
  out=runs/cglow-$variant
  "$PY" -m flowkern.models.train cglow --config small --variant "$variant" --label shape --data shapes \
    --frames 4 --batch-size 16 --lr 5e-4 --warmup 200 --steps "$STEPS" --eval-every 500 --eval-clips 64 \
    --ckpt-every 250 --num-samples 8 --temperature 0.7 --seed 0 --out "$out" --resume
  mkdir -p "$HERE/$variant"
  cp "$out/metrics.csv" "$HERE/$variant/metrics.csv"
  cp "$out/samples/step$STEPS-grid.png" "$HERE/$variant/samples-grid.png"
  cp "$out/samples/step$STEPS-0.gif" "$HERE/$variant/continuation-0.gif"
  cp "$out/samples/step$STEPS-scratch-0.gif" "$HERE/$variant/scratch-0.gif"
done

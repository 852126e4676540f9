#!/usr/bin/env bash
# The RFN's `small` config on stochastic moving digits at 32x32 (10-frame clips), a bounded CPU run; SCALE=tanh (the
# thesis's clamp of the couplings' log-scale, the default here) or SCALE=sigmoid (Glow's). Resumable: run it again
# and it continues from its checkpoint. One thread: on a 2-core machine a second thread buys ~15% alone and costs far
# more when anything else runs. The run goes to runs/rfn-small-$SCALE; evaluate.sh measures it and copies its
# results here.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-.venv/bin/python}
SCALE=${SCALE:-tanh}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$PY" -m flowkern.models.train rfn --config small --data digits --frames 10 --batch-size 8 --coupling-scale "$SCALE" \
  --lr 5e-4 --warmup 200 --decay-from 3500 --decay-to 0.1 --beta-start 1e-7 --beta-steps 2000 \
  --steps "${STEPS:-5000}" --eval-every 250 --eval-clips 64 --ckpt-every 250 --sample-every 1000 --num-samples 4 \
  --temperature 0.7 --seed 0 --out "runs/rfn-small-$SCALE" --resume

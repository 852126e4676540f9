#!/usr/bin/env bash
# Evaluate the runs of run.sh (SCALE=tanh and SCALE=sigmoid) on 256 clips of a seed neither training nor its
# held-out set used: per-frame bits/dim (the ELBO at beta 1), and frames 6-10 predicted from frames 1-5, best of 8
# samples in PSNR and SSIM against copying frame 5 and a flat frame at its median, at three temperatures; and a fresh,
# untrained model. Then the curves, the table and the samples. Writes eval-*.json, table.md, curves.png and
# <scale>/ here.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-.venv/bin/python}
HERE=models/results/rfn-digits-small-cpu
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for scale in tanh sigmoid; do
  run=runs/rfn-small-$scale
  "$PY" -m flowkern.models.evaluate --checkpoint "$run/checkpoint.pt" --clips 256 --context 5 --best-of 8 \
    --temperatures 0.5,0.7,1.0 --json "$HERE/eval-$scale.json" --overwrite
  mkdir -p "$HERE/$scale"
  cp "$run/metrics.csv" "$HERE/$scale/metrics.csv"
  last=$(ls "$run"/samples/step*-grid.png | sed 's/.*step\([0-9]*\)-grid.png/\1/' | sort -n | tail -1)
  cp "$run/samples/step$last-grid.png" "$HERE/$scale/samples-grid.png"
  cp "$run/samples/step$last-0.gif" "$HERE/$scale/sample-0.gif"
done
"$PY" -m flowkern.models.evaluate --checkpoint runs/rfn-small-tanh/checkpoint.pt --clips 256 --context 5 --untrained \
  --temperatures 0.7 --json "$HERE/eval-untrained.json" --overwrite
"$PY" -m flowkern.models.plot "$HERE"/{tanh,sigmoid}/metrics.csv --labels tanh,sigmoid --series train,eval \
  --out "$HERE/curves.png" --overwrite
"$PY" - "$HERE" <<'PYEOF'
import json, sys
here = sys.argv[1]
mean = lambda v: sum(v) / len(v)  # noqa: E731
out = ["| model | bits/dim, frames 2-10 | temperature | PSNR, best of 8 | copy frame 5 | flat frame | SSIM, best of 8 "
       "| copy | flat | sampled frames not finite |", "|---|---|---|---|---|---|---|---|---|---|"]
for name, key in (("untrained", "untrained"), ("tanh clamp (the thesis)", "tanh"), ("sigmoid (Glow)", "sigmoid")):
    r = json.load(open(f"{here}/eval-{key}.json"))
    bpd = mean(r["per_frame_bpp"])
    for t, p in r.get("prediction", {"-": None}).items():
        if p is None:
            out.append(f"| {name} | {bpd:.4f} | - | - | - | - | - | - | - | - |")
            continue
        out.append(f"| {name} | {bpd:.4f} | {t} | {mean(p['psnr']):.2f} | {mean(p['copy_psnr']):.2f} | "
                   f"{mean(p['flat_psnr']):.2f} | {mean(p['ssim']):.3f} | {mean(p['copy_ssim']):.3f} | "
                   f"{mean(p['flat_ssim']):.3f} | {mean(p['diverged']):.1%} |")
open(f"{here}/table.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PYEOF

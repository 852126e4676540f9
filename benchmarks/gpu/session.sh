#!/usr/bin/env bash
# A prepared run for a lent GPU machine, in two calls of the device tool's `run` (each under its 10-minute limit):
#   bash benchmarks/gpu/session.sh test    build, GPU tests, compute-sanitizer on every CUDA kernel pass   (~8 min)
#   bash benchmarks/gpu/session.sh bench   copy bandwidth and the fused ops on both GPU backends           (~5 min)
# The second call reuses the first one's build when the machine is still warm, else builds again. Results land in
# $OUT (the device tool brings back at most 8 files). Each phase has its own time limit, so a hang cannot eat the
# session's device time. The GPU image has torch, triton, pybind11, ninja, numpy and pytest, and no internet.
set -u
OUT=${OUT:-/tmp/flowkern-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FLOWKERN_BUILD_JOBS=${FLOWKERN_BUILD_JOBS:-16}
cd "$(dirname "$0")/../.."

build() {
  if (cd /tmp && python -c "import flowkern, sys; sys.exit(0 if flowkern.cuda_status()['available'] else 1)") 2>/dev/null
  then
    return 0  # installed by an earlier call on this machine
  fi
  { nvidia-smi; nvcc --version; python -c "import torch, triton; print('torch', torch.__version__, 'triton', \
triton.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/env.txt" 2>&1
  timeout 300 pip install --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  # run from outside the tree: `import flowkern` must find the installed package (with _C), not the sources
  (cd /tmp && python -c "import flowkern; print(flowkern.cuda_status())") | tee -a "$OUT/env.txt"
}

case "${1:-}" in
  test)
    build
    # the model and data tests need av/imageio/tqdm, which the GPU image lacks: ops, layers, reversible, memory
    timeout 330 pytest -q -p no:cacheprovider tests/ops tests/nn tests/test_reversible.py tests/test_memory.py \
      -k "not ddp" > "$OUT/tests.log" 2>&1
    echo "tests: exit $? ($(tail -1 "$OUT/tests.log"))"
    for tool in memcheck racecheck synccheck; do
      echo "== $tool" >> "$OUT/sanitizer.log"
      timeout 90 compute-sanitizer --tool "$tool" --error-exitcode 3 python benchmarks/gpu/kernels_once.py \
        >> "$OUT/sanitizer.log" 2>&1
      echo "compute-sanitizer $tool: exit $?"
    done
    ;;
  bench)
    build
    timeout 420 python benchmarks/gpu/ops.py "$OUT/ops" 2>&1 | tail -60
    ;;
  *)
    echo "usage: $0 test|bench" >&2
    exit 2
    ;;
esac

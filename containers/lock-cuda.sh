#!/usr/bin/env bash
# Resolve the gpu dependency group for the CUDA image (linux x86_64) into containers/cuda.lock.txt.
# Reads only package metadata: no multi-GB CUDA wheel is downloaded.
#
#   containers/lock-cuda.sh [PYTHON_VERSION]     (default 3.11)
#
# Resolved for the oldest Python the image is built with: Debian bookworm's 3.11 (CI's base here);
# the same pins install on Ubuntu 24.04's 3.12 (the nvidia/cuda base), whereas a 3.12 resolution
# can pick releases that dropped 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.11}
read -r -a PIP <<< "${PIP:-pip}"
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for i in $(seq 5 39); do platforms+=(--platform "manylinux_2_${i}_x86_64"); done
# pycuda is built from source in the image's own stage (installed --no-deps): its run-time
# dependencies are locked here, since an sdist's metadata cannot be resolved without building it.
pycuda_deps=(pytools mako platformdirs)
report="$(mktemp)"
"${PIP[@]}" install --dry-run --ignore-installed --quiet --report "$report" --python-version "$PYVER" "${platforms[@]}" \
  --only-binary=:all: --target "$(mktemp -d)" --group pyproject.toml:gpu "${pycuda_deps[@]}"
{
  echo "# Locked requirements of the CUDA image (containers/cuda.Dockerfile): the gpu dependency group resolved"
  echo "# (plus pycuda's run-time dependencies)"
  echo "# for Python $PYVER on linux x86_64 without downloading wheels. Regenerate with containers/lock-cuda.sh."
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); \
print(''.join(sorted(f\"{i['metadata']['name']}=={i['metadata']['version']}\n\" for i in r['install'])), end='')" "$report"
} > containers/cuda.lock.txt
echo "wrote containers/cuda.lock.txt"

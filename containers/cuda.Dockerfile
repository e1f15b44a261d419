# quantmatrix CUDA image: PyTorch CUDA, ONNX Runtime GPU, TensorRT (a build argument), pycuda.
#
#   nox -s images -- cuda
#   docker run --gpus all ...        (needs the NVIDIA container runtime on the host)
#
#   CI here (no Docker Hub, no NVIDIA index): on the locally made Debian base, without TensorRT
#   python -m bench.docker cuda --build-arg BASE_IMAGE=debian:bookworm-slim --build-arg TENSORRT_REQUIREMENT=
#   docker run --rm IMAGE -m quantmatrix doctor --json
#
# CUDA user space comes from PyPI wheels (PyTorch's CUDA build, onnxruntime-gpu, cuda-python), so
# any Debian/Ubuntu base works; the NVIDIA container runtime brings the driver (libcuda.so.1,
# libnvidia-ml.so.1) on GPU hosts. pycuda is a source package: it is compiled in its own stage
# against the headers shipped in NVIDIA's PyPI wheels plus a generated libcuda.so link stub
# (containers/make_libcuda_stub.py, soname libcuda.so.1), and only the wheel reaches the runtime
# stage. The nvidia-* wheels' libraries are put on the loader path (ld.so.conf.d), so pycuda, ONNX
# Runtime's CUDA/TensorRT providers and bitsandbytes find cuBLAS, cuDNN, nvJitLink... as torch does.
# TENSORRT_REQUIREMENT defaults to the real package; pass an empty value where NVIDIA's package
# index is unreachable, and TensorRT cells report "skipped: TensorRT not installed".

ARG BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
ARG TENSORRT_REQUIREMENT="tensorrt-cu13==10.16.1.11"

FROM ${BASE_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM python AS pycuda
ARG PYCUDA_VERSION=2026.1
COPY containers/make_libcuda_stub.py /tmp/make_libcuda_stub.py
# The one pipe (readelf | tee | grep -q) fails through grep when readelf fails: no pipefail needed.
# hadolint ignore=DL4006
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --upgrade "pip>=26" wheel setuptools \
    && /opt/build/bin/pip install "nvidia-cuda-runtime==13.0.96" \
       "nvidia-cuda-profiler-api~=13.0.0" "nvidia-cuda-crt~=13.0.0" \
       "numpy==2.4.6" \
    && /opt/build/bin/python /tmp/make_libcuda_stub.py /opt/cuda-stub --aksetup /etc/aksetup-defaults.py \
    && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels "pycuda==${PYCUDA_VERSION}" \
    && mkdir /tmp/whl && /opt/build/bin/python -m zipfile -e /wheels/pycuda-*.whl /tmp/whl \
    && readelf -d /tmp/whl/pycuda/_driver*.so | tee /dev/stderr | grep -q 'Shared library: \[libcuda.so.1\]' \
    && rm -rf /tmp/whl

FROM python AS build
ARG TENSORRT_REQUIREMENT
COPY containers/cuda.lock.txt /tmp/cuda.lock.txt
COPY --from=pycuda /wheels /wheels
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade "pip>=26" \
    && /opt/venv/bin/pip install -r /tmp/cuda.lock.txt \
    && /opt/venv/bin/pip install --no-deps /wheels/pycuda-*.whl \
    && if [ -n "${TENSORRT_REQUIREMENT}" ]; then /opt/venv/bin/pip install "${TENSORRT_REQUIREMENT}"; fi

FROM ${BASE_IMAGE} AS runtime
# g++ and the Python headers: torch.compile (inductor) generates and compiles code at run time.
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev g++ ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin quantmatrix
COPY --from=build /opt/venv /opt/venv
# The nvidia-* (and tensorrt_libs) wheels' libraries on the loader path: pycuda's extension, ONNX
# Runtime's provider libraries and bitsandbytes' CUDA library dlopen them with no rpath into site-packages.
# find's errors (a directory absent without TensorRT) are expected; an empty list fails ldconfig's check below.
# hadolint ignore=DL4006
RUN find /opt/venv/lib/python3*/site-packages/nvidia /opt/venv/lib/python3*/site-packages/tensorrt_libs \
        -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u > /etc/ld.so.conf.d/quantmatrix-nvidia-wheels.conf \
    && ldconfig && test -s /etc/ld.so.conf.d/quantmatrix-nvidia-wheels.conf
COPY quantmatrix /app/quantmatrix
COPY builders /app/builders
COPY runners /app/runners
COPY bench /app/bench
# Declared late: a new commit must not invalidate the apt and venv layers above.
ARG GIT_COMMIT=unknown
ARG LOCK_SHA256=unknown
LABEL org.opencontainers.image.title="quantmatrix-cuda" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.quantmatrix.lock-sha256="${LOCK_SHA256}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    QUANTMATRIX_GIT_COMMIT=${GIT_COMMIT} \
    QUANTMATRIX_IMAGE_LOCK=${LOCK_SHA256}
USER 10001
WORKDIR /work
ENTRYPOINT ["python3"]

# quantmatrix CPU image: PyTorch CPU, ONNX Runtime, Optimum; builders and runners run in it.
#
#   nox -s images -- cpu                       (what you normally run)
#   DOCKER_BUILDKIT=1 docker build -f containers/cpu.Dockerfile \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t quantmatrix-cpu .
#
# Build stage: a venv from the locked requirements (containers/cpu.lock.txt). torch is pinned as
# the +cpu build, from a local wheelhouse (wheelhouse/, gitignored, bind-mounted) or from
# TORCH_INDEX_URL, so the multi-GB CUDA build can never be picked. A host CA bundle can be passed
# as the optional BuildKit secret `ca` (for TLS-intercepting proxies); it is never baked in.
# Runtime stage: the venv and the code only, non-root, offline by default.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY containers/cpu.lock.txt /tmp/cpu.lock.txt
# pip is upgraded first: bookworm's pip 23 backtracks for minutes on optimum-onnx's pins.
RUN --mount=type=secret,id=ca \
    --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade "pip>=26" \
    && /opt/venv/bin/pip install --find-links /wheelhouse \
       ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}+cpu" \
    && grep -v '^torch==' /tmp/cpu.lock.txt > /tmp/rest.txt \
    && echo "torch==${TORCH_VERSION}+cpu" > /tmp/torch.txt \
    && /opt/venv/bin/pip install --find-links /wheelhouse -c /tmp/torch.txt -r /tmp/rest.txt \
    && /opt/venv/bin/pip check

FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# g++ and the Python headers: torch.compile (inductor) generates and compiles C++ at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev g++ ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin quantmatrix
COPY --from=build /opt/venv /opt/venv
COPY quantmatrix /app/quantmatrix
COPY builders /app/builders
COPY runners /app/runners
COPY bench /app/bench
# Jobs read the matrix and write artifacts/results in the mounted /work. No hub at run time.
# Declared late: a new commit must not invalidate the apt and venv layers above.
ARG GIT_COMMIT=unknown
ARG LOCK_SHA256=unknown
LABEL org.opencontainers.image.title="quantmatrix-cpu" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.quantmatrix.lock-sha256="${LOCK_SHA256}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    QUANTMATRIX_GIT_COMMIT=${GIT_COMMIT} \
    QUANTMATRIX_IMAGE_LOCK=${LOCK_SHA256}
USER 10001
WORKDIR /work
ENTRYPOINT ["python"]

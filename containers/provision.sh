#!/usr/bin/env bash
# Provision a Docker engine on a fresh Debian machine with no Docker Hub access (what CI has):
# Debian's docker.io + debootstrap, dockerd started in the background, and a local
# debian:bookworm-slim base image made with debootstrap when it is absent. Needs root.
# Idempotent: a second run does nothing that is already done.
set -euo pipefail

if ! command -v /usr/sbin/dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "== provision: installing docker.io and debootstrap from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if ! /usr/bin/docker info >/dev/null 2>&1; then
  echo "== provision: starting dockerd"
  nohup /usr/sbin/dockerd >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do /usr/bin/docker info >/dev/null 2>&1 && break; sleep 0.5; done
  /usr/bin/docker info >/dev/null || { echo "dockerd did not start; see /tmp/dockerd.log" >&2; exit 1; }
fi

BASE="${QUANTMATRIX_BASE_IMAGE:-debian:bookworm-slim}"
if ! /usr/bin/docker image inspect "$BASE" >/dev/null 2>&1; then
  echo "== provision: building $BASE locally with debootstrap (Docker Hub is unreachable)"
  root="$(mktemp -d)"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/tmp/debootstrap.log 2>&1 \
    || { tail -20 /tmp/debootstrap.log >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | /usr/bin/docker import - "$BASE" >/dev/null
  rm -rf "$root"
fi
echo "== provision: docker $(/usr/bin/docker version --format '{{.Server.Version}}'), base image $BASE ready"

#!/usr/bin/env bash
# Installs the Debian packages shoal's build, demo and tests need (idempotent).
set -euo pipefail
# chromium + chromium-driver: the dashboard's browser tests (crates/shoal/tests/dashboard.rs).
pkgs=(busybox-static nginx nftables iproute2 tini docker-registry skopeo util-linux procps curl gcc make pkg-config ca-certificates chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
if ! command -v docker >/dev/null 2>&1; then
  # The docker CLI drives shoal; Debian 12 ships it in docker.io (the engine there is not started).
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends docker.io || { apt-get update && apt-get install -y --no-install-recommends docker.io; }
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo (Rust toolchain) is required: https://rustup.rs" >&2
  exit 1
fi

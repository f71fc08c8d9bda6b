#!/usr/bin/env bash
# Runs every test: unit tests everywhere, and the root integration tests that drive a real
# `shoal daemon` with the stock docker CLI. Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "run the tests as root (sudo $0)" >&2; exit 1; fi
scripts/deps.sh
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2

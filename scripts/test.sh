#!/usr/bin/env bash
# Every test on a fresh machine: set-up, then the workspace's unit and integration tests
# (real GStreamer, ONNX Runtime, YOLOX-Nano and SQLite; no mocks).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
exec cargo test --workspace --locked "$@"

#!/usr/bin/env bash
# Every test on a fresh machine: set-up, then the workspace's unit and integration tests
# (real GStreamer, ONNX Runtime, YOLOX-Nano and SQLite; no mocks), then the web console in
# a real browser against a running `skynet run` (tests/console).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo test --workspace --locked "$@"
# The browser test runs target/debug/skynet, which the tests above have just built (a plain
# `cargo build` would rebuild it with other features for nothing).
tests/console/run.sh

#!/usr/bin/env bash
# Fuzzes the sensor payload parsers for a bounded time (default 60 s; FUZZ_SECONDS).
# cargo-fuzz needs nightly flags: the machine's one stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1 (no other toolchain can be fetched here). Crashes are saved under
# fuzz/artifacts/ and fail the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
# The corpus grows in a copy outside git; the seeds stay as committed.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp fuzz/corpus/sensor_payloads/* "$work/"
cargo fuzz run --fuzz-dir fuzz sensor_payloads "$work" fuzz/corpus/sensor_payloads -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 2>&1 | tail -n 25

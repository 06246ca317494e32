#!/usr/bin/env bash
# Fuzzes, for a bounded total time (default 60 s; FUZZ_SECONDS) shared equally between the
# targets: the sensor payload parsers (sensor_payloads), the detector's box decoders of
# every model family (box_decoders), the case-status intake (case_status), and the GB/T 28181
# SIP and MANSCDP parsers (gb28181_sip, gb28181_manscdp).
# cargo-fuzz needs nightly flags: the machine's one stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1 (no other toolchain can be fetched here). Crashes are saved under
# fuzz/artifacts/ and fail the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${FUZZ_SECONDS:-60}"
targets=(sensor_payloads box_decoders case_status gb28181_sip gb28181_manscdp)
per_target=$(( seconds / ${#targets[@]} ))
[ "$per_target" -ge 1 ] || per_target=1
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
# Each corpus grows in a copy outside git; the seeds stay as committed.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Both built first, so building does not eat into the fuzzing time.
for target in "${targets[@]}"; do cargo fuzz build --fuzz-dir fuzz "$target"; done
for target in "${targets[@]}"; do
  mkdir -p "$work/$target"
  cp fuzz/corpus/"$target"/* "$work/$target/"
  echo "== $target (${per_target} s)"
  cargo fuzz run --fuzz-dir fuzz "$target" "$work/$target" fuzz/corpus/"$target" -- \
    -max_total_time="$per_target" -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 2>&1 | tail -n 25
done

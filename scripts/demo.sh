#!/usr/bin/env bash
# The demo on a fresh machine: set-up, a release build, then the demo config on vtest.avi.
# Incidents print on stdout and go to var/demo/ (outbox.sqlite, incidents.jsonl);
# metrics are at http://127.0.0.1:9464/metrics while it runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --locked -p skynet
# Each demo starts from a clean state: a deployment keeps its outbox, and a restart goes on
# where the last run stopped (a replayed file would then apply nothing twice).
rm -rf var/demo
exec target/release/skynet run --config configs/demo.toml --until-eof "$@"

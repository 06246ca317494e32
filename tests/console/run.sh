#!/usr/bin/env bash
# The web console's browser test against a real skynet:
#   1. its own Mosquitto and NATS on free ports (scripts/setup.sh installs both), so it
#      neither uses nor disturbs any broker already running on this machine;
#   2. `skynet run --config configs/city.toml` with the API, the metrics and the state
#      (outbox, users, evidence) in a temporary directory;
#   3. one user per role;
#   4. node --test tests/console/, which starts the gas-leak simulator itself once the
#      operator is watching the live view (SKYNET_TRIGGER_INCIDENT).
#   5. tests/console/video.test.mjs: its own RTSP camera and `skynet run` of a small config
#      (clips and live view on); an incident clip and a live stream play in Chromium.
# Screenshots and skynet's log go to $SKYNET_TEST_ARTIFACTS (default target/console-artifacts).
# Needs Node 20+, chromium (apt-get install chromium fonts-wqy-microhei) and a built skynet
# (SKYNET_BIN, default target/debug/skynet; built with `cargo build -p skynet` when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

SKYNET=${SKYNET_BIN:-$ROOT/target/debug/skynet}
CONFIG=configs/city.toml
export SKYNET_TEST_ARTIFACTS=${SKYNET_TEST_ARTIFACTS:-$ROOT/target/console-artifacts}
mkdir -p "$SKYNET_TEST_ARTIFACTS"

if [ ! -x "$SKYNET" ]; then
  cargo build -p skynet
fi
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y chromium fonts-wqy-microhei >/dev/null
  else
    echo "run.sh: chromium is missing: sudo apt-get install -y chromium fonts-wqy-microhei" >&2
    exit 1
  fi
fi
if [ ! -d tests/console/node_modules/playwright-core ] || [ ! -d tests/console/node_modules/axe-core ]; then
  (cd tests/console && npm ci --no-audit --no-fund)
fi

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/skynet-console.XXXXXX")
PIDS=()
cleanup() {
  local status=$?
  # Last started, first stopped: skynet before its broker and queue.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "${PIDS[i]}" 2>/dev/null || true
  done
  cp "$WORK/skynet.log" "$SKYNET_TEST_ARTIFACTS/skynet.log" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT INT TERM

# Never the machine's own broker (a fresh machine has none at 127.0.0.1:1883).
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if [ ! -x "$MOSQUITTO" ]; then
  echo "run.sh: mosquitto is missing: scripts/setup.sh installs it (apt-get install mosquitto)" >&2
  exit 1
fi
MQTT_PORT=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n' "$MQTT_PORT" >"$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
export SKYNET_MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT"
if command -v nats-server >/dev/null; then
  NATS_PORT=$(free_port)
  nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
  PIDS+=($!)
  export SKYNET_NATS_URL="nats://127.0.0.1:$NATS_PORT"
else
  # Nothing listens there: skynet keeps committing to its outbox while the queue is down.
  export SKYNET_NATS_URL="nats://127.0.0.1:$(free_port)"
fi

API_PORT=$(free_port)
METRICS_PORT=$(free_port)
export SKYNET_API_LISTEN="127.0.0.1:$API_PORT"
export SKYNET_METRICS_LISTEN="127.0.0.1:$METRICS_PORT"
export SKYNET_STATE_DIR="$WORK/state"
# The pages built into the binary, as they ship. SKYNET_CONSOLE_FROM_DISK=1 serves them from
# crates/skynet-serve/web instead, so edits need no rebuild while working on them.
unset SKYNET_CONSOLE_DIR
if [ "${SKYNET_CONSOLE_FROM_DISK:-0}" = 1 ]; then
  export SKYNET_CONSOLE_DIR="$ROOT/crates/skynet-serve/web"
fi
mkdir -p "$SKYNET_STATE_DIR"

# One user per role, with random passwords. The inspector works for the department of the
# gas-leak incidents (configs/city.toml: [risk.categories.gas_leak] department).
password() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
declare -A PASSWORDS
add_user() {
  local name=$1
  shift
  PASSWORDS[$name]=$(password)
  printf '%s' "${PASSWORDS[$name]}" | "$SKYNET" users add "$name" "$@" --config "$CONFIG" >/dev/null
}
add_user op --role operator
add_user insp --role inspector --department emergency-management
add_user eng --role engineer
add_user adm --role admin
export SKYNET_TEST_USERS="{\"operator\":{\"username\":\"op\",\"password\":\"${PASSWORDS[op]}\"},\"inspector\":{\"username\":\"insp\",\"password\":\"${PASSWORDS[insp]}\"},\"engineer\":{\"username\":\"eng\",\"password\":\"${PASSWORDS[eng]}\"},\"admin\":{\"username\":\"adm\",\"password\":\"${PASSWORDS[adm]}\"}}"

"$SKYNET" run --config "$CONFIG" >"$WORK/skynet.log" 2>&1 &
SKYNET_PID=$!
PIDS+=("$SKYNET_PID")

# Ready when /readyz answers 200 and the API serves the console.
ready=false
for _ in $(seq 1 120); do
  if ! kill -0 "$SKYNET_PID" 2>/dev/null; then break; fi
  if curl -fsS -o /dev/null "http://$SKYNET_METRICS_LISTEN/readyz" 2>/dev/null \
    && curl -fsS -o /dev/null "http://$SKYNET_API_LISTEN/" 2>/dev/null; then
    ready=true
    break
  fi
  sleep 1
done
if [ "$ready" != true ]; then
  echo "run.sh: skynet did not become ready; its log:" >&2
  tail -n 50 "$WORK/skynet.log" >&2
  exit 1
fi

export SKYNET_CONSOLE_URL="http://$SKYNET_API_LISTEN"
export SKYNET_TRIGGER_INCIDENT="'$SKYNET' simulate sensors --scenario leak --duration 30 --url '$SKYNET_MQTT_URL'"

set +e
# video.test.mjs starts its own RTSP camera and skynet (clips and live view on); one file at a time.
node --test --test-reporter=spec --test-concurrency=1 tests/console/console.test.mjs tests/console/video.test.mjs 2>&1 | tee "$WORK/node-test.log"
node_status=${PIPESTATUS[0]}
set -e

# One summary line in the form of cargo's, for CI's count.
passed=$(sed -n 's/^ℹ pass \([0-9]*\)$/\1/p' "$WORK/node-test.log" | tail -n 1)
failed=$(sed -n 's/^ℹ fail \([0-9]*\)$/\1/p' "$WORK/node-test.log" | tail -n 1)
passed=${passed:-0}
failed=${failed:-0}
if [ "$node_status" = 0 ] && [ "$failed" = 0 ] && [ "$passed" -gt 0 ]; then
  echo "test result: ok. $passed passed; 0 failed"
else
  [ "$failed" = 0 ] && failed=1
  echo "test result: FAILED. $passed passed; $failed failed"
  exit 1
fi

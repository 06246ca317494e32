#!/usr/bin/env bash
# Creates (or checks) the city's SKYNET_INCIDENTS on the city hub: no subjects of its own, and
# one source per district, each the district's SKYNET_INCIDENTS (incidents and grid risk)
# reached through that district's JetStream domain ($JS.<district>.API over its leaf node).
# Needs only bash: it speaks the NATS protocol itself on /dev/tcp, so no `nats` CLI or client
# library has to be installed where it runs. Idempotent: run it again, or with a district
# added, and the stream is updated in place (the sources it already had go on from where
# they were).
#
#   CITY_NATS_URL       host:port of the hub's client port (default 127.0.0.1:4222)
#   CITY_NATS_USER      default `city`
#   CITY_NATS_PASSWORD  required (the hub's user `city`)
#   DISTRICTS           the districts' JetStream domains (default "north south")
#   CITY_STREAM         default SKYNET_INCIDENTS
#   DISTRICT_STREAM     default SKYNET_INCIDENTS (the skynet NATS sink's `stream`)
#   MAX_AGE_DAYS        how long the city keeps an event (default 30, as the sink's default)
set -euo pipefail
export LC_ALL=C

url="${CITY_NATS_URL:-127.0.0.1:4222}"
url="${url#nats://}"
host="${url%:*}" port="${url##*:}"
user="${CITY_NATS_USER:-city}"
password="${CITY_NATS_PASSWORD:?set CITY_NATS_PASSWORD (the password of the city user)}"
districts="${DISTRICTS:-north south}"
stream="${CITY_STREAM:-SKYNET_INCIDENTS}"
district_stream="${DISTRICT_STREAM:-SKYNET_INCIDENTS}"
max_age_days="${MAX_AGE_DAYS:-30}"

die() { printf 'create-city-streams: %s\n' "$*" >&2; exit 1; }
# A JSON string: backslashes and double quotes escaped (a password may hold either).
json_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"; }
valid_name() { [[ "$1" =~ ^[A-Za-z0-9_-]+$ ]] || die "\`$1\` is not a JetStream name or domain"; }
valid_name "$stream"; valid_name "$district_stream"
[[ "$max_age_days" =~ ^[0-9]+$ ]] || die "MAX_AGE_DAYS must be a whole number of days"

sources=""
for d in $districts; do
  valid_name "$d"
  sources+="${sources:+,}{\"name\":\"$district_stream\",\"external\":{\"api\":\"\$JS.$d.API\",\"deliver\":\"\"}}"
done
[ -n "$sources" ] || die "DISTRICTS is empty"
ns_per_day=86400000000000
config="{\"name\":\"$stream\",\"storage\":\"file\",\"retention\":\"limits\",\"num_replicas\":1,\
\"discard\":\"old\",\"max_age\":$((max_age_days * ns_per_day)),\"duplicate_window\":3600000000000,\
\"sources\":[$sources]}"

exec 3<>"/dev/tcp/$host/$port" || die "cannot connect to $host:$port"
IFS= read -r -t 10 line <&3 || die "no INFO from $host:$port"
[[ "$line" == INFO* ]] || die "not a NATS server at $host:$port"

cr=$'\r' lf=$'\n'
# send CMD [PAYLOAD]: one protocol line, and the payload (with its byte count) when given.
send() { printf '%s\r\n' "$1" >&3; }
# request SUBJECT PAYLOAD: the JetStream API's JSON answer on stdout.
request() {
  local subject="$1" payload="$2" inbox="_INBOX.city-streams.$$.$RANDOM"
  send "SUB $inbox 1"
  send "PUB $subject $inbox ${#payload}"
  send "$payload"
  local deadline=$((SECONDS + 15)) size reply
  while ((SECONDS < deadline)); do
    IFS= read -r -t 15 line <&3 || break
    line="${line%"$cr"}"
    case "$line" in
      PING) send PONG ;;
      -ERR*) die "server: ${line#-ERR }" ;;
      "MSG $inbox "*)
        size="${line##* }"
        IFS= read -r -N "$((size + 2))" -t 10 reply <&3 || die "short reply"
        send "UNSUB 1"
        printf '%s' "${reply%"$cr$lf"}"
        return 0 ;;
    esac
  done
  die "no answer to $subject (is JetStream enabled, and the user allowed?)"
}

connect="{\"verbose\":false,\"pedantic\":false,\"headers\":false,\"lang\":\"bash\",\"version\":\"1\",\
\"user\":$(json_string "$user"),\"pass\":$(json_string "$password")}"
send "CONNECT $connect"

answer="$(request "\$JS.API.STREAM.CREATE.$stream" "$config")"
# An API error answers {"type":"..._response","error":{...}}; a stream's answer holds "error"
# too, in each source not reached yet (a district whose stream is not made yet: normal).
failed() { [[ "$1" == *'_response","error":'* ]]; }
if failed "$answer"; then
  # Already there with another config (fewer districts, another age): update it in place.
  answer="$(request "\$JS.API.STREAM.UPDATE.$stream" "$config")"
fi
failed "$answer" && die "$stream: $answer"
printf 'create-city-streams: %s on %s sources %s from %s\n' "$stream" "$host:$port" "$district_stream" "$districts"

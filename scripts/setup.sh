#!/usr/bin/env bash
# Installs everything skynet needs on a fresh Debian 12 / Ubuntu 22.04+ machine.
# Idempotent: a second run checks what is already there and returns in seconds.
#
#   system packages  GStreamer 1.22+ (decode), build tools
#   ONNX Runtime     libonnxruntime.so from the PyPI `onnxruntime` wheel (ort loads it at run time)
#   models           weights listed in models/*.toml, checked against their sha256
#   media            vtest.avi (Debian opencv-doc) and dog.jpg, for the demo and the tests
#
# Everything but the packages goes to $SKYNET_DATA_DIR (default ~/.local/share/skynet).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data_dir="${SKYNET_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/skynet}"
shared_dir="${SKYNET_SHARED_DIR:-$here/../shared}"
ort_version="1.32.0"
ort_lib="libonnxruntime.so.${ort_version}"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: install the packages listed in scripts/setup.sh by hand"
  sudo_cmd=(sudo)
fi

apt_packages=(
  build-essential pkg-config curl ca-certificates python3 python3-pip unzip
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-rtsp
  # The tests' RTSP camera (tests/support/rtsp_camera.py): GStreamer's RTSP server from Python.
  python3-gi gir1.2-gst-rtsp-server-1.0
  # The sensor, sink and feedback tests and benchmarks start private brokers (Mosquitto, NATS
  # with JetStream) that they stop and start again; the TLS test makes certificates.
  mosquitto nats-server openssl
)

install_packages() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "system packages: present"
    return
  fi
  log "installing system packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_rust() {
  if command -v cargo >/dev/null; then
    log "rust: $(cargo --version)"
    return
  fi
  [ -x "$HOME/.cargo/bin/cargo" ] && return
  log "installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
}

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# fetch NAME DEST SHA256 SHARED_CANDIDATE URL...: first ../shared, then each URL; always checked.
fetch() {
  local name="$1" dest="$2" sha="$3" shared="$4"; shift 4
  if sha_ok "$dest" "$sha"; then log "$name: present"; return 0; fi
  mkdir -p "$(dirname "$dest")"
  if [ -n "$shared" ] && sha_ok "$shared" "$sha"; then
    cp "$shared" "$dest.part" && mv "$dest.part" "$dest"
    log "$name: copied from $shared"
    return 0
  fi
  local url
  for url in "$@"; do
    log "$name: downloading $url"
    if curl -fsSL --retry 3 -o "$dest.part" "$url" && sha_ok "$dest.part" "$sha"; then
      mv "$dest.part" "$dest"; return 0
    fi
    rm -f "$dest.part"
  done
  return 1
}

install_onnxruntime() {
  local lib_dir="$data_dir/lib"
  if [ -f "$lib_dir/$ort_lib" ]; then log "onnxruntime: $lib_dir/$ort_lib present"; return; fi
  log "onnxruntime: extracting $ort_lib from the PyPI wheel onnxruntime==$ort_version"
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==${ort_version}" \
    || die "pip could not download onnxruntime==$ort_version (is PyPI reachable?)"
  mkdir -p "$lib_dir"
  unzip -q -o -j "$tmp"/onnxruntime-*.whl "onnxruntime/capi/$ort_lib" -d "$lib_dir"
  ln -sf "$ort_lib" "$lib_dir/libonnxruntime.so"
  rm -rf "$tmp"
}

# model manifests carry: weights file name, sha256 list, URLs (see models/*.toml)
install_models() {
  local manifest name file sha urls
  for manifest in "$here"/models/*.toml; do
    name="$(basename "$manifest" .toml)"
    file="$(sed -n 's/^file *= *"\(.*\)"/\1/p' "$manifest" | head -1)"
    sha="$(sed -n 's/^sha256 *= *"\(.*\)"/\1/p' "$manifest" | head -1)"
    mapfile -t urls < <(sed -n 's/^url *= *"\(.*\)"/\1/p; s/^mirror *= *"\(.*\)"/\1/p' "$manifest")
    [ -n "$file" ] && [ -n "$sha" ] || die "$manifest: needs file and sha256 keys"
    fetch "model $name" "$data_dir/models/$file" "$sha" "$shared_dir/models/$file" "${urls[@]}" \
      || die "model $name: no copy matching sha256 $sha (tried $shared_dir/models and ${urls[*]:-no url})"
  done
}

vtest_sha="45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"
dog_sha="5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866"

install_media() {
  local media="$data_dir/media"
  if ! fetch "media vtest.avi" "$media/vtest.avi" "$vtest_sha" "$shared_dir/media/vtest.avi"; then
    log "media vtest.avi: extracting from Debian's opencv-doc package"
    local tmp; tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download opencv-doc >/dev/null 2>&1) || { "${sudo_cmd[@]}" apt-get update -qq; (cd "$tmp" && apt-get download opencv-doc >/dev/null); }
    dpkg -x "$tmp"/opencv-doc_*.deb "$tmp/x"
    local src; src="$(find "$tmp/x" -name vtest.avi | head -1)"
    [ -n "$src" ] || die "opencv-doc has no vtest.avi"
    mkdir -p "$media"; cp "$src" "$media/vtest.avi"; rm -rf "$tmp"
    sha_ok "$media/vtest.avi" "$vtest_sha" || log "warning: vtest.avi from opencv-doc differs from the tested copy"
  fi
  # dog.jpg only serves the detection test: without it the demo still runs.
  fetch "media dog.jpg" "$media/dog.jpg" "$dog_sha" "$shared_dir/media/dog.jpg" \
    "https://raw.githubusercontent.com/Megvii-BaseDetection/YOLOX/main/assets/dog.jpg" \
    || log "warning: dog.jpg is not in $shared_dir/media and could not be downloaded; the detection test needs it"
}

install_packages
install_rust
install_onnxruntime
install_models
install_media
log "done: data in $data_dir (set SKYNET_DATA_DIR to move it)"

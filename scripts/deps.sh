#!/usr/bin/env bash
# Install the Debian packages tailor builds and tests with (no-op when present).
set -euo pipefail
pkgs=(build-essential cmake libcjson-dev clang libclang-rt-14-dev valgrind python3 python3-pip curl libmicrohttpd-dev
      pkg-config libcairo2-dev fonts-dejavu-core)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

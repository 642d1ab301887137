#!/usr/bin/env bash
# Installs every Debian package the project needs to build, test and run; idempotent.
# Usage: bash deploy/install-deps.sh   (as root, or with sudo available). Prints what it installed.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git
  libyaml-dev liblmdb-dev lmdb-utils libzmq3-dev libcjson-dev
  libopenblas-dev libjpeg62-turbo-dev libpng-dev zlib1g-dev
  openmpi-bin libopenmpi-dev
  sentencepiece libsentencepiece-dev
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: installed ${#missing[@]} package(s): ${missing[*]}"

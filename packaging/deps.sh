#!/bin/bash
# Installs the Debian packages syscont needs to build, test and run. Idempotent: only
# missing packages are installed. Usage: packaging/deps.sh [extra packages...]
set -euo pipefail

packages=(
    # build
    pkg-config libostree-dev libglib2.0-dev
    # build: ISA-L, which the isal-rs crate compiles for the fast gzip inflate
    nasm autoconf automake libtool make
    # run
    ostree skopeo runc crun systemd dbus
    # tests and demo
    docker-registry busybox-static uidmap ca-certificates util-linux iproute2 procps
    gcc g++ libc6-dev python3 etcd-server etcd-client
    # packaging (dpkg-shlibdeps, strip) and its test (man)
    dpkg-dev man-db
    "$@"
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "packaging/deps.sh: missing packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "Installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

#!/bin/sh
# Build (once) and cache a Debian bookworm root file system that boots under
# `systemd-nspawn --boot`, for the provisioning tests (tests/fixtures/nspawn.py).
#
# Usage: scripts/nspawn-root.sh [CACHE_DIR]      (as root; prints the tarball path)
#
# The tarball is keyed by the suite, the mirror and the package list, and lives
# outside the repository (default: $LFR_EDGE_CACHE or ~/.cache/lfr-edge). Each
# test run extracts a fresh copy, so every converge starts from a clean host.
# Needs: debootstrap, systemd-container (systemd-nspawn), zstd or gzip.
set -eu

SUITE=bookworm
MIRROR=${LFR_EDGE_MIRROR:-http://deb.debian.org/debian}
# What a freshly flashed device image would have, plus what the test needs to
# reach it (openssh-server) and what Ansible modules need (python3-apt).
# mosquitto/mosquitto-clients are for the control_room_broker role converged on
# the same container; pre-installing them keeps the converge off the network.
PACKAGES="systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,python3-packaging,openssh-server,ca-certificates,libsystemd0,procps,mosquitto,mosquitto-clients"
VERSION=1   # bump when the steps below change

CACHE=${1:-${LFR_EDGE_CACHE:-$HOME/.cache/lfr-edge}}
KEY=$(printf '%s\n' "$VERSION" "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-16)
if command -v zstd >/dev/null 2>&1; then EXT=tar.zst; COMP="zstd -q -T0"; else EXT=tar.gz; COMP="gzip -1"; fi
OUT="$CACHE/bookworm-$KEY.$EXT"

if [ -s "$OUT" ]; then
    echo "$OUT"
    exit 0
fi

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"

nice -n 10 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    exit 1
}

# Nothing may listen before the test configures it (the container shares the
# host's network namespace): the broker is configured by the role, sshd gets a
# free port per run. Disable both; the test enables sshd after choosing a port.
systemd-nspawn -q -D "$ROOT" --register=no --keep-unit sh -c '
    systemctl disable mosquitto.service ssh.service >/dev/null 2>&1 || true
    systemctl mask getty@tty1.service console-getty.service >/dev/null 2>&1 || true
    rm -f /etc/ssh/ssh_host_*
    apt-get clean
    rm -rf /var/lib/apt/lists/*
' >&2

echo "$(date -u +%FT%TZ) $PACKAGES" >"$ROOT/etc/lfr-edge-test-root"
tar -C "$ROOT" --numeric-owner --xattrs -cf - . | $COMP >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
# Older roots (another package list) are of no further use.
for old in "$CACHE"/bookworm-*.tar.*; do
    [ "$old" = "$OUT" ] || rm -f "$old"
done
echo "$OUT"

#!/bin/sh
# Build (once) and cache a Debian bookworm root file system that boots under
# `systemd-nspawn --boot`, for the provisioning tests (tests/fixtures/nspawn.py),
# or an arm64 one for the aarch64 test (tests/fixtures/arm64.py), run under qemu.
#
# Usage: scripts/nspawn-root.sh [--arch arm64] [CACHE_DIR]
#        (as root; prints the tarball path)
#
# The tarball is keyed by the architecture, the suite, the mirror and the package
# list, and lives outside the repository (default: $LFR_EDGE_CACHE or
# ~/.cache/lfr-edge). Each test run extracts a fresh copy, so every converge starts
# from a clean host.
# Needs: debootstrap, systemd-container (systemd-nspawn), zstd or gzip; for arm64
# also mmdebstrap and qemu-user-static with binfmt_misc. (debootstrap's second stage
# runs its package resolution in perl under the emulator, a process per package: on
# the loaded 2-core development machine it had not finished unpacking the base system
# after 12 minutes; mmdebstrap resolves with the host's apt and only the maintainer
# scripts run emulated.)
set -eu

ARCH=amd64
if [ "${1:-}" = "--arch" ]; then ARCH=$2; shift 2; fi
SUITE=bookworm
MIRROR=${LFR_EDGE_MIRROR:-http://deb.debian.org/debian}
case "$ARCH" in
amd64)
    # What a freshly flashed device image would have, plus what the test needs to
    # reach it (openssh-server) and what Ansible modules need (python3-apt).
    # mosquitto/mosquitto-clients are for the control_room_broker role converged on
    # the same container; pre-installing them keeps the converge off the network.
    PACKAGES="systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,python3-packaging,openssh-server,ca-certificates,libsystemd0,procps,mosquitto,mosquitto-clients"
    NAME=bookworm ;;
arm64)
    # What the daemon needs on a Raspberry Pi OS (bookworm, 64-bit) device to be
    # installed as the role installs it (python3 and its venv; libsystemd0), and a
    # compiler for the one dependency without an aarch64 wheel (systemd-python, built
    # once into the test's wheelhouse). Not booted: systemd 252 under qemu-user reaches
    # multi-user.target, but every unit with credentials fails ("Failed to set up
    # credentials: Invalid argument"), edge.service's LoadCredential= among them, so
    # nothing for booting or SSH is installed (each maintainer script runs emulated).
    PACKAGES="python3,python3-venv,libsystemd0,gcc,libc6-dev,python3-dev,pkg-config,libsystemd-dev"
    NAME=bookworm-arm64 ;;
*)
    echo "unknown architecture $ARCH (amd64 or arm64)" >&2; exit 2 ;;
esac
VERSION=1   # bump when the steps below change

CACHE=${1:-${LFR_EDGE_CACHE:-$HOME/.cache/lfr-edge}}
KEY=$(printf '%s\n' "$VERSION" "$ARCH" "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-16)
# amd64 keeps the key it had before arm64 existed (its cached root stays valid).
[ "$ARCH" = amd64 ] && KEY=$(printf '%s\n' "$VERSION" "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-16)
if command -v zstd >/dev/null 2>&1; then EXT=tar.zst; COMP="zstd -q -T0"; else EXT=tar.gz; COMP="gzip -1"; fi
OUT="$CACHE/$NAME-$KEY.$EXT"

if [ -s "$OUT" ]; then
    echo "$OUT"
    exit 0
fi

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
# --one-file-system: never into a /proc or /dev an interrupted build left mounted.
trap 'rm -rf --one-file-system "$WORK"' EXIT
ROOT="$WORK/root"

if [ "$ARCH" = amd64 ]; then
    nice -n 10 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
        tail -n 30 "$WORK/debootstrap.log" >&2
        exit 1
    }
else
    nice -n 10 mmdebstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
        tail -n 30 "$WORK/debootstrap.log" >&2
        exit 1
    }
    # The kernel looks for binfmt_misc's interpreter inside the container unless it
    # was registered with the F flag (Debian's is not): put it where the host's
    # registration says, for the step below only.
    QEMU=$(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)
    mkdir -p "$ROOT$(dirname "$QEMU")"
    cp "$(readlink -f "$QEMU")" "$ROOT$QEMU"
fi

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

[ "$ARCH" = amd64 ] || rm -f "$ROOT$QEMU"
echo "$(date -u +%FT%TZ) $PACKAGES" >"$ROOT/etc/lfr-edge-test-root"
tar -C "$ROOT" --numeric-owner --xattrs -cf - . | $COMP >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
# Older roots (another package list) are of no further use.
for old in "$CACHE/$NAME"-????????????????.tar.*; do
    [ "$old" = "$OUT" ] || rm -f "$old"
done
echo "$OUT"

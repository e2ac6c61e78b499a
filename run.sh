#!/usr/bin/env bash
# The project's two entry points, each doing its own set-up on a fresh
# Debian / Raspberry Pi OS machine:
#
#   ./run.sh demo    run the daemon on a bundled clip against a local broker
#                    and show the alerts the control room receives (Ctrl-C stops)
#   ./run.sh test    install what the tests need, then lint, type-check and test
#
#   ./run.sh setup   only the set-up (apt packages, .venv, the package)
set -euo pipefail
cd "$(dirname "$0")"

VENV=${EDGE_VENV:-.venv}
# Runtime needs: venv + compiler for systemd-python, mosquitto for the demo.
APT_RUNTIME=(python3-venv python3-dev gcc pkg-config libsystemd-dev mosquitto mosquitto-clients openssl)
# Test-only needs: a systemd host to converge Ansible on, and its tools; a browser and a
# PostgreSQL server for the console's tests; libcap-dev to build python-prctl (picamera2's
# dependency, for tests/test_picamera2_real.py); qemu-user-static, binfmt-support and
# mmdebstrap (with arch-test) for the arm64 (Raspberry Pi) root of tests/test_aarch64.py.
APT_TEST=(systemd-container debootstrap openssh-client systemd zstd chromium postgresql libcap-dev
          qemu-user-static binfmt-support mmdebstrap arch-test)

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@";
    elif command -v sudo >/dev/null 2>&1; then sudo "$@";
    else log "need root (or sudo) to run: $*"; return 1; fi
}

apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        log "not a Debian system: please install ${missing[*]} yourself"; return 1
    fi
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python_bin() {
    for py in python3.13 python3.12 python3.11 python3.10 python3; do
        if command -v "$py" >/dev/null 2>&1 \
                && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    log "Python 3.10 or newer is required (3.10 is JetPack 6's)"; return 1
}

setup() {
    local extras=$1; shift
    apt_install "$@"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$(python_bin)" -m venv "$VENV"
    fi
    # Re-install only when pyproject.toml changed since the last install.
    local stamp="$VENV/.installed-$extras"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        log "pip install -e .[$extras]"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e ".[$extras]"
        touch "$stamp"
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    setup)
        setup test "${APT_RUNTIME[@]}" "${APT_TEST[@]}"
        ;;
    demo)
        setup eval,console "${APT_RUNTIME[@]}"
        exec "$VENV/bin/edge" demo "$@"
        ;;
    test)
        setup test "${APT_RUNTIME[@]}" "${APT_TEST[@]}"
        # Python 3.10 (Jetson's JetPack 6) is the oldest supported; no 3.10 interpreter can be
        # installed here, so the static checks for 3.10 are its proof (README, "Platforms").
        log "ruff (target py310)"
        "$VENV/bin/ruff" check --target-version py310 edge tests benchmarks models/build
        log "mypy --strict (Python 3.10, and the interpreter's own version)"
        "$VENV/bin/mypy" edge --python-version 3.10
        "$VENV/bin/mypy" edge --python-version "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        log "pytest"
        set +e
        "$VENV/bin/pytest" "$@"
        rc=$?
        set -e
        # pytest's 5 means "no tests collected": that is a failure here too.
        exit $rc
        ;;
    *)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac

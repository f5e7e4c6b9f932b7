#!/usr/bin/env bash
# Idempotent machine + venv setup for cnet on Debian 12 (run as root).
# Fast when everything is already present: apt and pip run only when needed.
set -euo pipefail

cd "$(dirname "$0")/.."

APT_PACKAGES=(
    nftables python3-nftables libnftables1 iproute2 python3-venv python3-pip
    runc busybox-static tcpdump dnsmasq iputils-ping netcat-openbsd procps
    util-linux psmisc curl bind9-dnsutils etcd-server etcd-client iperf3
    docker.io podman containernetworking-plugins python3-scapy tshark graphviz
)
VENV=.venv
STAMP="$VENV/.installed"
# Debian's interpreter, never a pyenv shim: python3-nftables lives in its dist-packages.
SYS_PYTHON=/usr/bin/python3

log() { printf 'setup: %s\n' "$*" >&2; }

# --- apt -------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing apt packages (${missing[*]}) and not root: cannot install"
        exit 1
    fi
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- venv ------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $SYS_PYTHON (--system-site-packages)"
    "$SYS_PYTHON" -m venv --system-site-packages "$VENV"
    rm -f "$STAMP"
fi

# A regular (not editable) install: setuptools' editable finder costs every
# `cnet` invocation ~9 ms of start-up, and the CLI's start-up is a benchmark.
# Reinstalled whenever a source file is newer than the stamp.
SOURCES=(pyproject.toml cnet cnm drivers dns runtime ingress cli daemon capture)
changed=""
if [[ -f "$STAMP" ]]; then
    changed=$(find "${SOURCES[@]}" -newer "$STAMP" \( -name '*.py' -o -name pyproject.toml \) \
        -print -quit 2>/dev/null || true)
fi
if [[ ! -f "$STAMP" || -n "$changed" ]]; then
    log "pip install '.[test]' (sources changed)"
    rm -rf build  # setuptools' staging dir: stale copies of moved files would ship
    "$VENV/bin/pip" install --disable-pip-version-check -q '.[test]'
    "$VENV/bin/pip" install --disable-pip-version-check -q --no-deps --force-reinstall .
    touch "$STAMP"
fi

# --- check -----------------------------------------------------------------
if ! "$VENV/bin/python" -c 'import nftables, pyroute2' 2>/dev/null; then
    log "ERROR: $VENV/bin/python cannot import nftables and pyroute2"
    "$VENV/bin/python" -c 'import nftables, pyroute2'
    exit 1
fi
log "ok ($("$VENV/bin/python" --version), nftables + pyroute2 importable)"

#!/usr/bin/env bash
# cnet walkthrough on a throwaway setup: a "host" network namespace with its own cnetd,
# the Docker notes' walkthrough with real containers (a localnet bridge network, c1
# running, c2 reaching it, a web server published on a host port and fetched from the
# host, its topology and a trace of it), then the network layer alone (two sandboxes, a
# ping, and a trace blocked by network isolation). The root namespace's
# interfaces and firewall are never touched; an EXIT trap removes everything.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
BIN="$REPO/.venv/bin"
CNET="$BIN/cnet"
CNETD="$BIN/cnetd"

if [[ $(id -u) -ne 0 ]]; then
    echo "demo: must run as root (network namespaces)" >&2
    exit 1
fi
[[ -x "$CNET" && -x "$CNETD" ]] || { echo "demo: run 'make setup' first" >&2; exit 1; }

NS="cnet-demo-$$"
NSPATH="/run/netns/$NS"
TMP=$(mktemp -d /tmp/cnet-demo.XXXXXX)
SOCK="$TMP/cnet.sock"
export CNET_HOST="unix://$SOCK"
DPID=""
STARTED=0

bold() { if [[ -t 1 ]]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
say() { echo; bold "## $*"; }
# Print a command like a walkthrough, then run it.
run() { bold "\$ $*"; "$@"; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    say "cleanup"
    if [[ -n "$DPID" ]] && kill -0 "$DPID" 2>/dev/null; then
        if ((STARTED)); then
            run "$CNET" rm -f c1 c2 web 2>/dev/null
            run "$CNET" network disconnect localnet s1 2>/dev/null
            run "$CNET" network disconnect localnet s2 2>/dev/null
            run "$CNET" sandbox rm -f s1 s2 s3 2>/dev/null
            run "$CNET" network rm localnet othernet 2>/dev/null
        fi
        bold "\$ kill -TERM $DPID   # stop cnetd"
        kill -TERM "$DPID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$DPID" 2>/dev/null; then
            echo "cnetd ignored SIGTERM for 10 s: SIGKILL" >&2
            kill -KILL "$DPID" 2>/dev/null
        fi
        wait "$DPID" 2>/dev/null
    fi
    if [[ -e "$NSPATH" ]]; then
        run nsenter --net="$NSPATH" "$CNETD" --cleanup \
            --data-root "$TMP/data" --exec-root "$TMP/exec"
        for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        run ip netns del "$NS"
    fi
    # Last resort: anything still mounted under $TMP means cleanup missed something.
    local leftovers
    leftovers=$(awk -v t="$TMP" 'index($2, t) == 1 {print $2}' /proc/self/mounts | sort -r)
    if [[ -n "$leftovers" ]]; then
        echo "demo: WARNING: mounts left under $TMP, unmounting:" >&2
        echo "$leftovers" >&2
        while read -r m; do umount -l "$m"; done <<<"$leftovers"
        ((rc == 0)) && rc=1
    fi
    if ((rc != 0)) && [[ -f "$TMP/cnetd.log" ]]; then
        echo "--- cnetd log ($TMP/cnetd.log) ---" >&2
        cat "$TMP/cnetd.log" >&2
    fi
    rm -rf "$TMP"
    if ((rc == 0)); then bold "demo finished: all cleaned up"; else echo "demo failed (rc=$rc)" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "a throwaway \"host\": network namespace $NS, state in $TMP"
run ip netns add "$NS"
run ip -n "$NS" link set lo up

say "start cnetd inside it (nsenter keeps our mount namespace, so sandbox mounts stay visible)"
bold "\$ nsenter --net=$NSPATH $CNETD -H $CNET_HOST --data-root $TMP/data --exec-root $TMP/exec --log-level info --docker-plugin-socket none &"
nsenter --net="$NSPATH" "$CNETD" -H "$CNET_HOST" --data-root "$TMP/data" \
    --exec-root "$TMP/exec" --log-level info --docker-plugin-socket none >"$TMP/cnetd.log" 2>&1 &
DPID=$!
for i in $(seq 100); do
    if "$CNET" -H "$CNET_HOST" info >/dev/null 2>&1; then break; fi
    if ! kill -0 "$DPID" 2>/dev/null; then echo "demo: cnetd exited during startup" >&2; exit 1; fi
    if ((i == 100)); then echo "demo: cnetd not answering after 10 s" >&2; exit 1; fi
    sleep 0.1
done
echo "cnetd is up (pid $DPID, log $TMP/cnetd.log); CNET_HOST=$CNET_HOST"
STARTED=1

say "an image: a busybox rootfs from Debian's busybox-static"
run scripts/build-busybox-image.sh "$TMP/busybox.tar"
run "$CNET" image import "$TMP/busybox.tar" busybox

say "the walkthrough: a bridge network and c1 on it"
run "$CNET" network create localnet
run "$CNET" run -d --name c1 --network localnet busybox sleep 1d
C1_IP=$("$CNET" inspect c1 | "$BIN/python" -c \
    'import json,sys; print(json.load(sys.stdin)[0]["NetworkSettings"]["Networks"]["localnet"]["IPAddress"])')
echo "c1 has $C1_IP"

say "c2 on the same network reaches c1 by name (the embedded DNS at 127.0.0.11)"
run "$CNET" run --rm --name c2 --network localnet busybox ping -c 3 c1
run "$CNET" dns lookup c1 --from c1

say "a web server published on host port 5001"
run "$CNET" run -d --name web --network localnet -p 5001:80 busybox \
    sh -c 'mkdir -p /www && echo "hello from the web container" > /www/index.html && exec httpd -f -p 80 -h /www'
run "$CNET" ps
run "$CNET" port web
for _ in $(seq 50); do
    nsenter --net="$NSPATH" curl -s -m 1 http://127.0.0.1:5001/ >/dev/null 2>&1 && break
    sleep 0.1
done
say "fetched from the host (its loopback) — DNAT in nftables, no proxy process"
run nsenter --net="$NSPATH" curl -s -m 2 http://127.0.0.1:5001/

say "the picture: every node, network, container, address and published port"
run "$CNET" topology

say "trace: c1 -> the published port on its gateway (DNAT to web, delivered)"
GW=$("$CNET" network inspect localnet | "$BIN/python" -c \
    'import json,sys; print(json.load(sys.stdin)[0]["IPAM"]["Config"][0]["Gateway"])')
run "$CNET" trace --proto tcp --port 5001 c1 "$GW"
run "$CNET" rm -f c1 web

say "the network layer alone: two sandboxes"
run "$CNET" sandbox create s1
run "$CNET" sandbox create s2
run "$CNET" network connect localnet s1
run "$CNET" network connect localnet s2

say "what s1 sees"
run "$CNET" sandbox exec s1 -- ip -br addr

say "s1 pings s2"
S2_IP=$("$CNET" sandbox inspect s2 | "$BIN/python" -c \
    'import json,sys; print(json.load(sys.stdin)[0]["Networks"]["localnet"]["IPAddress"].split("/")[0])')
echo "s2 has $S2_IP"
run "$CNET" sandbox exec s1 -- ping -c 3 "$S2_IP"

say "the network"
run "$CNET" network inspect localnet

say "isolation: s3 on another network; the trace names the nftables rule that drops s1's probe"
run "$CNET" network create othernet
run "$CNET" sandbox create s3
run "$CNET" network connect othernet s3
S3_IP=$("$CNET" sandbox inspect s3 | "$BIN/python" -c \
    'import json,sys; print(json.load(sys.stdin)[0]["Networks"]["othernet"]["IPAddress"].split("/")[0])')
run "$CNET" trace --timeout 0.5 s1 "$S3_IP" || true

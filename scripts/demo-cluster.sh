#!/usr/bin/env bash
# cnet multi-host walkthrough on one machine (the Docker notes' overlay chapter): two
# "hosts" as two network namespaces joined by an underlay (a veth pair, 10.98.0.1 and
# 10.98.0.2), a one-member etcd inside host 1, a cnetd per host in the same cluster; an
# attachable overlay network made on node1, a container on each node, and c1 pinging
# c2 across hosts by name over VXLAN. The root namespace's interfaces and firewall are
# never touched; an EXIT trap removes everything (also on failure or Ctrl-C).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
BIN="$REPO/.venv/bin"
CNET="$BIN/cnet"
CNETD="$BIN/cnetd"
ETCD=/usr/bin/etcd

if [[ $(id -u) -ne 0 ]]; then
    echo "demo-cluster: must run as root (network namespaces)" >&2
    exit 1
fi
[[ -x "$CNET" && -x "$CNETD" ]] || { echo "demo-cluster: run 'make setup' first" >&2; exit 1; }
[[ -x "$ETCD" ]] || { echo "demo-cluster: $ETCD missing (make setup installs etcd-server)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/cnet-demo.XXXXXX)
NET=uber-net
ETCD_IP=10.98.0.1
STORE="etcd://$ETCD_IP:2379"
# Per host N (1, 2): namespace, underlay address, API socket, daemon pid.
NS=("" "cnet-demo-$$-h1" "cnet-demo-$$-h2")
IP=("" 10.98.0.1 10.98.0.2)
SOCK=("" "unix://$TMP/h1.sock" "unix://$TMP/h2.sock")
DPID=("" "" "")
ETCD_PID=""
TCPDUMP_PID=""
STARTED=0

bold() { if [[ -t 1 ]]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
say() { echo; bold "## $*"; }
# Print a command like a walkthrough, then run it.
run() { bold "\$ $*"; "$@"; }
# `on N ARGS...`: print and run `cnet ARGS...` against node N's daemon.
on() { local n=$1; shift; bold "node$n\$ cnet $*"; "$CNET" -H "${SOCK[n]}" "$@"; }
# The same without printing (readiness checks).
quiet() { local n=$1; shift; "$CNET" -H "${SOCK[n]}" "$@"; }
nspath() { echo "/run/netns/${NS[$1]}"; }

# SIGTERM, wait up to 10 s, then SIGKILL. Only ever a pid this script started.
stop_pid() {
    local pid=$1 what=$2
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    bold "\$ kill -TERM $pid   # stop $what"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$what ignored SIGTERM for 10 s: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    say "cleanup"
    if [[ -n "$TCPDUMP_PID" ]] && kill -0 "$TCPDUMP_PID" 2>/dev/null; then
        kill -TERM "$TCPDUMP_PID" 2>/dev/null; wait "$TCPDUMP_PID" 2>/dev/null
    fi
    if ((STARTED)); then
        [[ -n "${DPID[1]}" ]] && kill -0 "${DPID[1]}" 2>/dev/null && on 1 rm -f c1 2>/dev/null
        [[ -n "${DPID[2]}" ]] && kill -0 "${DPID[2]}" 2>/dev/null && on 2 rm -f c2 2>/dev/null
        [[ -n "${DPID[1]}" ]] && kill -0 "${DPID[1]}" 2>/dev/null && on 1 network rm "$NET" 2>/dev/null
    fi
    stop_pid "${DPID[1]}" "cnetd on node1"
    stop_pid "${DPID[2]}" "cnetd on node2"
    for n in 1 2; do
        [[ -e "$(nspath "$n")" ]] || continue
        run nsenter --net="$(nspath "$n")" "$CNETD" --cleanup \
            --data-root "$TMP/h$n/data" --exec-root "$TMP/h$n/exec"
    done
    stop_pid "$ETCD_PID" "etcd"
    for n in 1 2; do
        [[ -e "$(nspath "$n")" ]] || continue
        for pid in $(ip netns pids "${NS[n]}" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        run ip netns del "${NS[n]}"
    done
    # Last resort: anything still mounted under $TMP means cleanup missed something.
    local leftovers
    leftovers=$(awk -v t="$TMP" 'index($2, t) == 1 {print $2}' /proc/self/mounts | sort -r)
    if [[ -n "$leftovers" ]]; then
        echo "demo-cluster: WARNING: mounts left under $TMP, unmounting:" >&2
        echo "$leftovers" >&2
        while read -r m; do umount -l "$m"; done <<<"$leftovers"
        ((rc == 0)) && rc=1
    fi
    if ((rc != 0)); then
        for log in "$TMP/h1/cnetd.log" "$TMP/h2/cnetd.log" "$TMP/etcd.log"; do
            [[ -s "$log" ]] || continue
            echo "--- $log ---" >&2
            cat "$log" >&2
        done
    fi
    rm -rf "$TMP"
    if ((rc == 0)); then
        bold "demo finished in ${SECONDS} s: all cleaned up"
    else
        echo "demo-cluster failed (rc=$rc)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait (up to $1 tenths of a second) until the command after it succeeds.
wait_for() {
    local tries=$1; shift
    for _ in $(seq "$tries"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "demo-cluster: timed out waiting for: $*" >&2
    return 1
}
both_ready() { [[ $(quiet 1 node ls | grep -c Ready) -eq 2 ]]; }
gone_on() { ! quiet "$@"; }

say "two \"hosts\": network namespaces ${NS[1]} and ${NS[2]}, state in $TMP"
run ip netns add "${NS[1]}"
run ip netns add "${NS[2]}"
say "the underlay: a veth pair eth0 <-> eth0, ${IP[1]}/24 and ${IP[2]}/24"
run ip -n "${NS[1]}" link add eth0 type veth peer name eth0 netns "${NS[2]}"
for n in 1 2; do
    run ip -n "${NS[n]}" addr add "${IP[n]}/24" dev eth0
    run ip -n "${NS[n]}" link set eth0 up
    run ip -n "${NS[n]}" link set lo up
done
run ip netns exec "${NS[1]}" ping -c 1 -W 2 "${IP[2]}"

say "the cluster store: one etcd member inside host 1 ($ETCD_IP:2379 client, :2380 peer)"
# setsid (here and for cnetd): a Ctrl-C reaches this script, whose EXIT trap then stops
# the daemons in order, rather than every process at once.
etcd_cmd=(setsid nsenter --net="$(nspath 1)" "$ETCD" --name m1 --data-dir "$TMP/etcd"
    --listen-client-urls "http://$ETCD_IP:2379" --advertise-client-urls "http://$ETCD_IP:2379"
    --listen-peer-urls "http://$ETCD_IP:2380" --initial-advertise-peer-urls "http://$ETCD_IP:2380"
    --initial-cluster "m1=http://$ETCD_IP:2380" --initial-cluster-state new
    --initial-cluster-token "cnet-demo-$$" --logger zap --log-outputs stderr --log-level warn)
bold "\$ ${etcd_cmd[*]} &"
"${etcd_cmd[@]}" </dev/null >"$TMP/etcd.log" 2>&1 &
ETCD_PID=$!
for i in $(seq 100); do
    if nsenter --net="$(nspath 1)" curl -sf -m 1 "http://$ETCD_IP:2379/health" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$ETCD_PID" 2>/dev/null; then echo "demo-cluster: etcd exited during startup" >&2; exit 1; fi
    if ((i == 100)); then echo "demo-cluster: etcd not healthy after 10 s" >&2; exit 1; fi
    sleep 0.1
done
run nsenter --net="$(nspath 1)" curl -s "http://$ETCD_IP:2379/health"
echo

say "a cnetd per host, both in the cluster (nsenter keeps our mount namespace)"
for n in 1 2; do
    mkdir -p "$TMP/h$n"
    cnetd_cmd=(setsid nsenter --net="$(nspath "$n")" "$CNETD" -H "${SOCK[n]}"
        --data-root "$TMP/h$n/data" --exec-root "$TMP/h$n/exec" --log-level info
        --docker-plugin-socket none
        --cluster-store "$STORE" --advertise-addr "${IP[n]}" --node-name "node$n")
    bold "\$ ${cnetd_cmd[*]} &"
    "${cnetd_cmd[@]}" </dev/null >"$TMP/h$n/cnetd.log" 2>&1 &
    DPID[n]=$!
done
for n in 1 2; do
    for i in $(seq 150); do
        if quiet "$n" info >/dev/null 2>&1; then break; fi
        if ! kill -0 "${DPID[n]}" 2>/dev/null; then echo "demo-cluster: cnetd on node$n exited during startup" >&2; exit 1; fi
        if ((i == 150)); then echo "demo-cluster: cnetd on node$n not answering after 15 s" >&2; exit 1; fi
        sleep 0.1
    done
    echo "node$n: cnetd is up (pid ${DPID[n]}, log $TMP/h$n/cnetd.log)"
done
STARTED=1
echo "below, \"nodeN\$ cnet ...\" is $CNET -H unix://$TMP/hN.sock ..."

say "the nodes, seen from node1"
wait_for 100 both_ready
on 1 node ls

say "an attachable overlay network, created once on node1 ..."
on 1 network create -d overlay --attachable "$NET"
say "... is known on node2 (one cluster store)"
wait_for 50 quiet 2 network inspect "$NET"
on 2 network ls

say "an image on both nodes: a busybox rootfs from Debian's busybox-static"
run scripts/build-busybox-image.sh "$TMP/busybox.tar"
on 1 image import "$TMP/busybox.tar" busybox
on 2 image import "$TMP/busybox.tar" busybox

say "c1 on node1, c2 on node2, both on $NET"
on 1 run -d --name c1 --network "$NET" busybox sleep 300
on 2 run -d --name c2 --network "$NET" busybox sleep 300

say "the network: the VNI is in Options (com.docker.network.driver.overlay.vxlanid_list)"
on 1 network inspect "$NET"
say "--verbose adds the peers: every node's endpoints (address, MAC, VTEP)"
on 1 network inspect --verbose "$NET"

say "c1 (node1) pings c2 (node2) by name, across hosts"
wait_for 50 quiet 1 dns lookup c2 --from c1
on 1 exec c1 ping -c 3 c2

say "inside c1: eth0 on the overlay (MTU 1500 - 50 = 1450), eth1 on cnet_gwbridge (the default route)"
on 1 exec c1 ip addr
on 1 exec c1 ip route

if command -v tcpdump >/dev/null 2>&1; then
    say "c1 pings c2 again, watched on the underlay: VXLAN (UDP 4789) between ${IP[1]} and ${IP[2]}"
    bold "\$ nsenter --net=$(nspath 1) timeout 5 tcpdump -nni eth0 -c 4 udp port 4789 &"
    nsenter --net="$(nspath 1)" timeout 5 tcpdump -nni eth0 -c 4 udp port 4789 \
        >"$TMP/tcpdump.out" 2>&1 &
    TCPDUMP_PID=$!
    wait_for 30 grep -q "listening on" "$TMP/tcpdump.out"
    on 1 exec c1 ping -c 2 c2
    tcpdump_rc=0
    wait "$TCPDUMP_PID" || tcpdump_rc=$?
    TCPDUMP_PID=""
    cat "$TMP/tcpdump.out"
    ((tcpdump_rc == 0)) || echo "demo-cluster: note: tcpdump saw fewer than 4 VXLAN packets (rc=$tcpdump_rc)"
else
    say "(tcpdump not installed: no underlay capture)"
fi

say "the same path, traced: the FDB names node2's VTEP, the VXLAN copy leaves the underlay"
on 1 trace c1 c2

say "both nodes, their networks and containers, seen from node1"
on 1 topology

say "the walkthrough's objects go"
on 1 rm -f c1
on 2 rm -f c2
on 1 network rm "$NET"
wait_for 50 gone_on 2 network inspect "$NET"
on 2 network ls
STARTED=0

#!/usr/bin/env bash
# Build a small busybox root filesystem tarball from Debian's busybox-static.
#
#   scripts/build-busybox-image.sh OUT.tar
#   cnet image import OUT.tar busybox
#
# Contents: /bin/busybox plus a symlink per applet (`busybox --list`), /etc/passwd
# and /etc/group (root, nobody), empty /proc /sys /dev /etc /root /var/www and
# /tmp (1777). No /etc/httpd.conf: `busybox httpd -f -p 80 -h /var/www` needs none.
#
# Idempotent and reproducible: fixed owners (0:0), sorted entries, every mtime set to
# the busybox binary's, so the same busybox gives the same bytes. The tarball is
# written to a temp file beside OUT and renamed into place.
# BUSYBOX=/path/to/busybox overrides the binary (it must be statically linked).
set -euo pipefail

usage() { echo "usage: $0 OUT.tar" >&2; exit 2; }
[[ $# -eq 1 && -n "$1" ]] || usage
out=$1
busybox=${BUSYBOX:-/bin/busybox}

if [[ ! -x "$busybox" ]]; then
    echo "$0: $busybox not found (apt-get install busybox-static)" >&2
    exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
    echo "$0: $busybox is dynamically linked (apt-get install busybox-static)" >&2
    exit 1
fi

stage=$(mktemp -d)
outdir=$(dirname -- "$out")
tmp_out=$(mktemp -p "$outdir" ".$(basename -- "$out").XXXXXX")
trap 'rm -rf -- "$stage" "$tmp_out"' EXIT

root=$stage/rootfs
mkdir -p "$root"/{bin,dev,etc,proc,root,sys,tmp,var/www}
chmod 0755 "$root" "$root"/{bin,dev,etc,proc,sys,var,var/www}
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"

install -m 0755 "$busybox" "$root/bin/busybox"
"$busybox" --list | while read -r applet; do
    [[ -n "$applet" && "$applet" != busybox ]] || continue
    ln -sf busybox "$root/bin/$applet"
done

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
EOF
chmod 0644 "$root/etc/passwd" "$root/etc/group"

mtime=$(stat -c %Y "$busybox")
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    --format=gnu -C "$root" -cf "$tmp_out" .
chmod 0644 "$tmp_out"
mv -f -- "$tmp_out" "$out"

#!/usr/bin/env bash
# Issue 4's DNS benchmark: dnsperf against cnet's embedded resolver at 127.0.0.11 inside a
# container, with dnsmasq, Docker's embedded DNS and aardvark-dns (where installed)
# measured in the same run. The logic is bench/dns_perf.py (not bench/dns.py: with bench/
# first on sys.path, that name would shadow dnspython's `dns` in every bench script);
# arguments go to it (--help). Needs root. Brings the repo's .venv up to date first.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
make -s -C "$repo" setup
exec "$repo/.venv/bin/python" "$here/dns_perf.py" "$@"

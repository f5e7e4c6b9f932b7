"""cnet's embedded resolver: 127.0.0.11:53 in every sandbox, served by cnetd itself.

    names.py      NameTable: per-network names and PTR entries, kept by the controller
    answers.py    AnswerCache: pre-encoded answers keyed by (networks, question bytes)
    forwarder.py  Forwarder, Upstream: everything that is not ours, to upstream resolvers
    server.py     DNSServer: one asyncio loop thread, UDP+TCP listeners per sandbox
    wire.py       the few byte-level DNS helpers the hot path needs

Wiring (controller and runtime):

    from cnet.dns.names import NameTable
    from cnet.dns.server import DNSServer
    from cnet.dns.forwarder import Upstream, upstreams_from_resolv_conf

    names = NameTable()
    dns = DNSServer(names).start()          # at daemon start, from cnetd's namespace
    # endpoint joined (container running): container name first, then aliases,
    # short id (12 hex), hostname; NAME.NETWORK forms are added by the table
    names.set_endpoint(net.id, net.name, ep.id, [name, *aliases, cid[:12], hostname],
                       ep.ipv4, ep.ipv6)
    names.remove_endpoint(ep.id)            # endpoint left: gone at once
    dns.add_sandbox(sb.id, sb.netns_path, {net ids}, internal=any internal,
                    upstreams=upstreams_from_resolv_conf(open("/etc/resolv.conf").read()))
    dns.update_sandbox(sb.id, networks=..., internal=..., upstreams=...)
    dns.remove_sandbox(sb.id)
    dns.lookup(sb.id, "name", "A")          # `cnet dns lookup`: answers and source
    dns.stats(sb.id) / dns.stats()          # counters
    dns.close()                             # at daemon stop
"""

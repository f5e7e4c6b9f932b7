"""PortPublisher and Firewall.unpublish error paths, with a stub firewall: a failed
unpublish is never lost (the bindings stay recorded and reserved, and the next release
or publish of the same owner tries again); unpublish swallows only pieces already gone;
a daemon-start restore never gives one host port to two owners."""

from __future__ import annotations

import logging

import pytest
from cnet.cnm.errors import Conflict
from cnet.ingress.firewall import Firewall, FirewallError, render_ports
from cnet.runtime.ports import PortPublisher

BINDINGS = {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}
PORTS = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}


class StubIngress:
    def __init__(self) -> None:
        self.published: list = []
        self.unpublished: list = []
        self.fail_unpublish: Exception | None = None

    def publish(self, entries) -> None:
        self.published.append(list(entries))

    def unpublish(self, entries) -> None:
        if self.fail_unpublish is not None:
            raise self.fail_unpublish
        self.unpublished.append(list(entries))


def test_a_failed_unpublish_keeps_the_bindings_recorded():
    ing = StubIngress()
    pub = PortPublisher(ing)
    pub.publish("c1", "10.0.0.2", BINDINGS, {})
    ing.fail_unpublish = FirewallError("Could not process rule: Operation not permitted")
    with pytest.raises(FirewallError):
        pub.release("c1")
    # Still DNATed as far as anyone knows: still shown, still reserved.
    assert pub.target("c1") == "10.0.0.2"
    assert [p.host_port for p in pub.published("c1")] == [8080]
    with pytest.raises(Conflict, match="already allocated"):
        pub.publish("c2", "10.0.0.3", BINDINGS, {})
    # The firewall works again: a release goes through and frees the port.
    ing.fail_unpublish = None
    pub.release("c1")
    assert pub.target("c1") is None and pub.published("c1") == []
    assert ing.unpublished == [[(("tcp", "", 8080), "10.0.0.2", 80)]]
    pub.publish("c2", "10.0.0.3", BINDINGS, {})
    assert pub.target("c2") == "10.0.0.3"


def test_publish_of_an_owner_whose_unpublish_failed_retries_it_first():
    ing = StubIngress()
    pub = PortPublisher(ing)
    pub.publish("c1", "10.0.0.2", BINDINGS, {})
    ing.fail_unpublish = FirewallError("Operation not permitted")
    with pytest.raises(FirewallError):
        pub.release("c1")
    ing.fail_unpublish = None
    assert pub.publish("c1", "10.0.0.5", BINDINGS, {}) == PORTS  # its own port: no conflict
    assert ing.unpublished == [[(("tcp", "", 8080), "10.0.0.2", 80)]]
    assert pub.target("c1") == "10.0.0.5"


def test_restore_refuses_a_host_port_another_owner_holds(caplog):
    ing = StubIngress()
    pub = PortPublisher(ing)
    assert pub.restore("aaaa1111", "10.0.0.2", PORTS) is True
    with caplog.at_level(logging.ERROR, logger="cnet.runtime.ports"):
        assert pub.restore("bbbb2222", "10.0.0.3", PORTS) is False
    assert "0.0.0.0:8080->80/tcp of bbbb2222 not restored: already held by aaaa1111" \
        in caplog.text
    assert pub.target("aaaa1111") == "10.0.0.2" and pub.target("bbbb2222") is None
    assert ing.published == [[(("tcp", "", 8080), "10.0.0.2", 80)]]
    # A port on one host address clashes with the same port on every address.
    one_ip = {"80/tcp": [{"HostIp": "192.0.2.1", "HostPort": "8080"}]}
    assert pub.restore("cccc3333", "10.0.0.4", one_ip) is False
    # The first owner's release frees it for good.
    pub.release("aaaa1111")
    assert pub.restore("bbbb2222", "10.0.0.3", PORTS) is True


class StubFirewall(Firewall):
    """Firewall whose libnftables answers are scripted per command."""

    def __init__(self, answer) -> None:
        super().__init__()
        self.answer = answer  # cmds -> None or an error message
        self.runs: list = []

    def _run(self, cmds):
        self.runs.append(cmds)
        err = self.answer(cmds)
        if err:
            raise FirewallError(err)
        return None


ENTRIES = [(("tcp", "", 8080), "10.0.0.2", 80), (("tcp", "", 8081), "10.0.0.2", 81)]
MISSING = "Error: Could not process rule: No such file or directory"


def test_unpublish_tolerates_pieces_already_gone():
    fw = StubFirewall(lambda cmds: MISSING if len(cmds) > 1 or "8081" in str(cmds) else None)
    fw.unpublish(ENTRIES)  # no error
    assert fw.runs[1:] == [[c] for c in render_ports("delete", ENTRIES)]  # each piece tried


def test_unpublish_raises_other_errors_after_removing_the_rest():
    def answer(cmds):
        if len(cmds) > 1:
            return MISSING
        return "Error: Could not process rule: Operation not permitted" \
            if "8080" in str(cmds) else None

    fw = StubFirewall(answer)
    with pytest.raises(FirewallError, match="Operation not permitted"):
        fw.unpublish(ENTRIES)
    assert fw.runs[1:] == [[c] for c in render_ports("delete", ENTRIES)]

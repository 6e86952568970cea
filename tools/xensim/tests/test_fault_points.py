"""Fault points of the simulated host that a fault matrix drives from its
own thread.

Waits are bounded generously and the assertions are on states, never on
how long something took."""

import os
import time

import pytest

from test_kernel_pciback_pcifront import Toolstack, be, fe, wait_for
from xensim.host import SimHost

pyxs = pytest.importorskip("pyxs")

BDF = "0000:00:10.0"


@pytest.fixture
def make_host(sockdir):
    hosts = []

    def make(scenario="pv-no-backend", **kwargs):
        host = SimHost(scenario, os.path.join(sockdir, f"h{len(hosts)}"), mount_sysfs=False, **kwargs)
        host.start()
        hosts.append(host)
        return host
    yield make
    for host in hosts:
        host.stop()


def attach(host):
    ts = Toolstack(host)
    try:
        ts.attach(1, [BDF], "domu1")
    finally:
        ts.close()


def still(host, checks, seconds=0.3):
    """The states stay as they are while nothing may change them."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert {p: host.read(p) for p in checks} == checks
        time.sleep(0.02)


# ------------------------------------------------------ kernel connect points

def test_pcifront_connect_hang_leaves_the_frontend_initialised_until_removed(make_host):
    host = make_host()
    rule = host.faults.add("pcifront.connect", "hang", domid=1)
    attach(host)
    wait_for(host, be(1), "4")                  # pciback connected
    wait_for(host, fe(1), "3")
    host.settle()                               # a held guest counts as settled
    still(host, {be(1): "4", fe(1): "3"})
    assert host.guest_devices(1) == {}
    assert [(p, a) for p, a, _ctx in host.faults.log] == [("pcifront.connect", "hang")]
    host.faults.remove(rule)
    wait_for(host, fe(1), "4")
    assert host.guest_devices(1) == {"0000:00:00.0": BDF}


def test_pcifront_connect_delay_then_connects(make_host):
    host = make_host()
    host.faults.add("pcifront.connect", "delay", seconds=0.5, domid=1, times=1)
    attach(host)
    wait_for(host, be(1), "4")
    wait_for(host, fe(1), "4")
    assert host.guest_devices(1) == {"0000:00:00.0": BDF}
    assert host.faults.log[0][:2] == ("pcifront.connect", "delay")


def test_pcifront_connect_matches_its_guest_only(make_host):
    host = make_host()
    host.faults.add("pcifront.connect", "hang", domid=2)
    attach(host)
    wait_for(host, fe(1), "4")
    assert host.faults.log == []


def test_pciback_connect_hang_leaves_the_backend_initialised_until_removed(make_host):
    host = make_host()
    rule = host.faults.add("pciback.connect", "hang", domid=1)
    attach(host)
    wait_for(host, fe(1), "3")
    wait_for(host, be(1), "3")
    host.settle()
    still(host, {be(1): "3", fe(1): "3"})
    assert host.pciback.vbus(1) == {}
    host.faults.remove(rule)
    wait_for(host, be(1), "4")
    wait_for(host, fe(1), "4")
    assert host.guest_devices(1) == {"0000:00:00.0": BDF}


def test_pciback_connect_delay_then_connects(make_host):
    host = make_host()
    host.faults.add("pciback.connect", "delay", seconds=0.5, domid=1)
    attach(host)
    wait_for(host, be(1), "4")
    wait_for(host, fe(1), "4")
    assert ("pciback.connect", "delay", {"domid": 1}) in host.faults.log


def test_a_hung_pciback_connect_whose_backend_went_away_does_not_connect(make_host):
    host = make_host()
    rule = host.faults.add("pciback.connect", "hang", domid=1)
    attach(host)
    wait_for(host, be(1), "3")
    # the toolstack gives up and removes both ends while dom0 is held
    with pyxs.Client(unix_socket_path=host.paths["xenstored"]) as c:
        c.delete(b"/local/domain/0/backend/pci/1")
        c.delete(b"/local/domain/1/device/pci/0")
    host.faults.remove(rule)
    host.settle()
    assert host.read(be(1)) is None and host.pciback.device_for(1) is None
    assert host.sysfs is None or host.sysfs.in_use_by(BDF) is None


def test_pciback_reconfigure_hang_holds_dom0_until_removed(make_host):
    host = make_host("pv-with-backend")
    wait_for(host, be(1), "4")
    rule = host.faults.add("pciback.reconfigure", "hang", domid=1)
    ts = Toolstack(host)
    try:
        ts.attach(1, ["0000:00:11.0"], "domu1")            # a second device: BE 7 -> FE 7
    finally:
        ts.close()
    wait_for(host, fe(1), "7")
    host.settle()                                          # dom0 held: settled
    still(host, {be(1): "7", be(1, "state-1"): "1", fe(1): "7"})
    host.faults.remove(rule)
    wait_for(host, be(1, "state-1"), "3")
    wait_for(host, fe(1), "4")
    wait_for(host, be(1), "4")
    assert sorted(host.guest_devices(1).values()) == ["0000:00:10.0", "0000:00:11.0"]

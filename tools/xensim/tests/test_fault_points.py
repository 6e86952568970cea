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


# ------------------------------------------------------------ kernel points

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

"""The simulated xen-pciback / xen-pcifront against libxl-style writes.

A pyxs client on the simulator's privileged socket plays the toolstack
(``Toolstack`` below writes exactly what libxl__device_pci_add_xenstore
writes); the assertions are on what the simulated kernels do in xenstore and
what the guest's PCI core ends up seeing.
"""

import json
import os
import time

import pytest

from xensim.host import SimHost

pyxs = pytest.importorskip("pyxs")

OPTS = b"msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"


class Toolstack:
    def __init__(self, host):
        self.host = host
        self.c = pyxs.Client(unix_socket_path=host.paths["xenstored"])
        self.c.connect()

    def close(self):
        self.c.close()

    def attach(self, domid, bdfs, name, reconfigure=True):
        """One transaction adding ``bdfs`` (creating the backend if absent)."""
        be = f"/local/domain/0/backend/pci/{domid}/0".encode()
        fe = f"/local/domain/{domid}/device/pci/0".encode()
        num = self.host.read(be.decode() + "/num_devs")
        self.c.transaction()
        if num is None:
            be_keys = [(b"frontend", fe), (b"frontend-id", b"%d" % domid), (b"online", b"1"), (b"state", b"1"),
                       (b"domain", name.encode())]
            fe_keys = [(b"backend", be), (b"backend-id", b"0"), (b"state", b"1")]
            for path, perms, keys in ((be, [b"n0", b"r%d" % domid], be_keys), (fe, [b"n%d" % domid, b"r0"], fe_keys)):
                try:
                    self.c.delete(path)
                except pyxs.PyXSError:
                    pass
                self.c.mkdir(path)
                self.c.set_perms(path, perms)
                for k, v in keys:
                    self.c.write(path + b"/" + k, v)
        n = int(num or 0)
        for i, bdf in enumerate(bdfs, n):
            for key, val in ((b"key-%d" % i, bdf.encode()), (b"dev-%d" % i, bdf.encode()), (b"opts-%d" % i, OPTS),
                             (b"state-%d" % i, b"1")):
                self.c.write(be + b"/" + key, val)
        self.c.write(be + b"/num_devs", b"%d" % (n + len(bdfs)))
        if n and reconfigure:
            self.c.write(be + b"/state", b"7")
        assert self.c.commit()

    def detach_begin(self, domid, indexes):
        be = f"/local/domain/0/backend/pci/{domid}/0".encode()
        self.c.transaction()
        for i in indexes:
            self.c.write(be + b"/state-%d" % i, b"5")
        self.c.write(be + b"/state", b"7")
        assert self.c.commit()


def wait_for(host, path, value, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.read(path) == value:
            return
        time.sleep(0.005)
    raise AssertionError(f"{path} is {host.read(path)!r}, never {value!r}")


def be(domid, key="state"):
    return f"/local/domain/0/backend/pci/{domid}/0/{key}"


def fe(domid, key="state"):
    return f"/local/domain/{domid}/device/pci/0/{key}"


@pytest.fixture
def make_host(sockdir):
    hosts = []

    def make(scenario):
        host = SimHost(scenario, os.path.join(sockdir, f"h{len(hosts)}"), mount_sysfs=False)
        host.start()
        ts = Toolstack(host)
        hosts.append((host, ts))
        return host, ts
    yield make
    for host, ts in hosts:
        ts.close()
        host.stop()


def test_paused_guest_connects_only_when_unpaused(make_host):
    host, _ts = make_host("pv-paused")
    # pciback exported the device and waits at Initialised; the guest ran nothing.
    assert host.read(be(1)) == "3"
    assert host.read(be(1, "state-0")) == "3"
    assert host.read(fe(1)) == "1"
    assert host.read(fe(1, "pci-op-ref")) is None
    time.sleep(0.1)
    assert host.read(fe(1)) == "1"
    host.unpause(1)
    wait_for(host, fe(1), "4")
    wait_for(host, be(1), "4")
    assert host.read(fe(1, "magic")) == "7"
    assert host.guest_devices(1) == {"0000:00:00.0": "0000:00:10.0"}


def test_guest_being_created_boots_and_picks_up_listed_devices(make_host):
    host, ts = make_host("pv-paused")
    assert 2 not in host.kernels            # not booted: no kernel yet
    ts.attach(2, ["0000:00:11.0"], "domu2")
    host.settle()
    ts.attach(2, ["0000:00:12.0"], "domu2", reconfigure=False)   # coldplug, one at a time
    host.settle()
    # Linux >= 5.11 exports coldplugged devices from the backend watch.
    assert host.read(be(2)) == "3"
    assert host.read(be(2, "state-1")) == "3"
    assert host.read(be(2, "vdev-1")) == "0000:00:01.00"
    assert host.read(fe(2)) == "1"
    host.start_guest(2)
    wait_for(host, be(2), "4")
    wait_for(host, fe(2), "4")
    assert host.guest_devices(2) == {"0000:00:00.0": "0000:00:11.0", "0000:00:01.0": "0000:00:12.0"}


def test_pv_guest_without_pcifront_never_answers(make_host):
    host, ts = make_host("mixed-host")
    ts.attach(2, ["0000:00:11.0"], "nofront")
    host.settle()
    time.sleep(0.05)
    assert host.read(be(2)) == "3"
    assert host.read(be(2, "state-0")) == "3"
    assert host.read(fe(2)) == "1"
    assert host.read(fe(2, "pci-op-ref")) is None
    assert host.guest_devices(2) == {}


def test_hvm_backend_has_no_frontend_and_hotplug_stays_reconfiguring(make_host):
    host, ts = make_host("hvm-dom0-qemu")
    assert host.read(be(3)) == "3"
    assert host.read(be(3, "state-0")) == "3"
    assert host.read(fe(3)) == "1"
    # A second device for an HVM guest: libxl writes state 7, nobody answers.
    ts.attach(3, ["0000:00:11.0"], "win1")
    host.settle()
    time.sleep(0.05)
    assert host.read(be(3)) == "7"
    assert host.read(be(3, "state-1")) == "1"
    assert host.read(be(3, "vdev-1")) is None


def test_several_devices_in_one_reconfigure_cycle_multifunction(make_host):
    host, ts = make_host("mixed-host")
    start = len(host.transitions)
    ts.attach(1, ["0000:00:11.0", "0000:01:00.0", "0000:01:00.1"], "web")
    wait_for(host, be(1), "4")
    host.settle()
    assert [host.read(be(1, f"vdev-{i}")) for i in range(4)] == [
        "0000:00:00.00", "0000:00:01.00", "0000:00:02.00", "0000:00:02.01"]
    assert [host.read(be(1, f"state-{i}")) for i in range(4)] == ["3"] * 4
    cycle = [(who, path.rsplit("/", 1)[1], v) for _t, who, path, v in host.transitions[start:]
             if path.endswith("/state")]
    assert cycle == [("A1", "state", "7"), ("D1", "state", "7"), ("D0", "state", "8"),
                     ("D1", "state", "4"), ("D0", "state", "4")]
    assert host.guest_devices(1) == {"0000:00:00.0": "0000:00:10.0", "0000:00:01.0": "0000:00:11.0",
                                     "0000:00:02.0": "0000:01:00.0", "0000:00:02.1": "0000:01:00.1"}
    # One cycle removes two, found through vdev-i.
    ts.detach_begin(1, [1, 3])
    wait_for(host, be(1), "4")
    host.settle()
    assert host.guest_devices(1) == {"0000:00:00.0": "0000:00:10.0", "0000:00:02.0": "0000:01:00.0"}
    assert sorted(host.pciback.device_for(1).vbus().values()) == ["0000:00:10.0", "0000:01:00.0"]


def test_fatal_error_device_not_bound_to_pciback(make_host):
    host, ts = make_host("mixed-host")
    ts.attach(1, ["0000:00:14.0"], "web")        # still on e1000
    wait_for(host, be(1), "5")
    host.settle()
    assert host.read("/local/domain/0/error/backend/pci/1/0/error") == \
        "22 Couldn't locate PCI device (0000:00:14.0)! perhaps already in-use?"
    # pcifront was Reconfiguring (7 >= Closing): the real driver ignores it.
    assert host.read(fe(1)) == "7"
    assert host.read(be(1, "state-1")) == "1"


def test_fatal_error_device_in_use_by_another_guest_at_backend_creation(make_host):
    host, ts = make_host("demo")
    ts.attach(2, ["0000:00:13.0"], "builder")     # alpine (1) holds it
    wait_for(host, fe(2), "6")
    wait_for(host, be(2), "6")
    assert host.read("/local/domain/0/error/backend/pci/2/0/error") == \
        "22 Couldn't locate PCI device (0000:00:13.0)! perhaps already in-use?"
    assert host.guest_devices(2) == {}
    assert host.guest_devices(1) == {"0000:00:00.0": "0000:00:13.0"}


def test_fault_export_error_and_frontend_hang(make_host):
    host, ts = make_host("pv-with-backend")
    host.faults.add("pcifront.reconfigure", "hang", domid=1, times=1)
    ts.attach(1, ["0000:00:11.0"], "domu1")
    host.settle()
    time.sleep(0.05)
    assert host.read(be(1)) == "7" and host.read(fe(1)) == "4"
    assert host.read(be(1, "state-1")) == "1"

    host2, ts2 = make_host("pv-with-backend")
    host2.faults.add("pciback.export", "error", bdf="0000:00:12.0")
    ts2.attach(1, ["0000:00:12.0"], "domu1")
    wait_for(host2, be(1), "5")
    assert host2.read("/local/domain/0/error/backend/pci/1/0/error").startswith(
        "22 Couldn't locate PCI device (0000:00:12.0)!")


def test_teardown_and_destroy_release_devices(make_host):
    host, _ts = make_host("pv-with-backend")
    assert host.sysfs is None or host.sysfs.in_use_by("0000:00:10.0") == 1
    userdata = [f for f in os.listdir(host.paths["userdata_dir"]) if f.startswith("userdata-d.1.")]
    assert len(userdata) == 1
    host.destroy(1)
    host.settle()
    assert host.read("/local/domain/0/backend/pci/1") is None
    assert host.read("/local/domain/1") is None
    assert host.read("/libxl/pci/0000-00-10-0/domid") is None
    assert host.pciback.device_for(1) is None
    if host.sysfs is not None:
        assert host.sysfs.in_use_by("0000:00:10.0") is None
        assert "pciback-release" in host.sysfs.resets("0000:00:10.0")
    assert not os.path.exists(os.path.join(host.paths["userdata_dir"], userdata[0]))


def test_domain_nodes_and_permissions_like_libxl(make_host):
    host, _ts = make_host("hvm-stubdom")
    perms = host.call(host.store.perms, "/local/domain/3")
    assert perms == ["n0", "r3"]
    assert host.call(host.store.perms, "/local/domain/3/error") == ["n3"]
    assert host.read("/local/domain/3/image/device-model-domid") == "4"
    assert host.read("/local/domain/4/target") == "3"
    assert host.read("/local/domain/4/device-model/3/state") == "running"
    assert host.read("/libxl/3/type") == "hvm" and host.read("/libxl/3/dm-version") == "qemu_xen"
    uuid = host.scenario.domain(3).uuid
    assert host.read(f"/vm/{uuid}/name") == "win1"
    assert host.read("/local/domain/3/vm") == f"/vm/{uuid}"
    with open(os.path.join(host.paths["userdata_dir"], f"userdata-d.3.{uuid}.libxl-json")) as fh:
        cfg = json.load(fh)
    assert cfg["c_info"] == {"type": "hvm", "name": "win1", "uuid": uuid, "passthrough": "share_pt"}
    # The stub domain has no config of its own.
    assert not [f for f in os.listdir(host.paths["userdata_dir"]) if f.startswith("userdata-d.4.")]

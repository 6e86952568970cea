"""The hypervisor recorder: Xen's checks, over its JSON-lines socket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from xensim.hypervisor import DOMID_IO, HvError, Hypervisor  # noqa: E402

SCENARIO = {
    "devices": [
        {"bdf": "00:10.0"},
        {"bdf": "00:11.0", "hidden": True},
        {"bdf": "00:12.0", "driver": "e1000"},
    ],
    "domains": [
        {"domid": 1, "name": "domu1", "type": "pv", "state": "running", "passthrough": "enabled"},
        {"domid": 2, "name": "nopt", "type": "pv", "state": "running", "passthrough": "disabled"},
        {"domid": 3, "name": "win1", "type": "hvm", "state": "paused", "passthrough": "enabled"},
    ],
}
SBDF_10 = 0x10 << 3
SBDF_11 = 0x11 << 3


class LoopThread:
    """An asyncio loop in a thread, as SimHost runs it."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def hv(tmp_path):
    lt = LoopThread()
    host = types.SimpleNamespace(paths={"hypervisor": str(tmp_path / "run/xensim/privcmd")},
                                 scenario=SCENARIO, grants=[], loop=lt.loop)
    hyp = Hypervisor(host)
    lt.run(hyp.start())
    yield hyp
    lt.run(hyp.stop())
    lt.close()
    assert not os.path.exists(host.paths["hypervisor"])


class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.f = self.sock.makefile("rwb")

    def __call__(self, **req):
        self.f.write(json.dumps(req).encode() + b"\n")
        self.f.flush()
        return json.loads(self.f.readline())

    def close(self):
        self.f.close()
        self.sock.close()


@pytest.fixture
def call(hv):
    c = Client(hv.path)
    yield c
    c.close()


def test_assign_to_domain_without_passthrough_is_eopnotsupp(hv, call):
    r = call(op="assign_device", domid=2, sbdf=SBDF_10, flags=0)
    assert r == {"ok": False, "errno": "EOPNOTSUPP", "error": "Operation not supported"}
    assert hv.owner(SBDF_10) == 0


def test_quarantine_assign_deassign_cycle(hv, call):
    # pci-assignable-add quarantines: dom0 -> DOMID_IO
    assert call(op="assign_device", domid=DOMID_IO, sbdf=SBDF_10, flags=0) == {"ok": True}
    assert hv.owner("0000:00:10.0") == DOMID_IO
    assert call(op="test_assign_device", domid=1, sbdf=SBDF_10)["ok"]
    assert call(op="assign_device", domid=1, sbdf=SBDF_10, flags=1, id=7) == {"ok": True, "id": 7}
    assert hv.owner(SBDF_10) == 1
    # in use by a guest: another guest gets EBUSY, test_assign says EINVAL
    assert call(op="assign_device", domid=3, sbdf=SBDF_10)["errno"] == "EBUSY"
    assert call(op="test_assign_device", domid=3, sbdf=SBDF_10)["errno"] == "EINVAL"
    # pci-assignable-remove while attached: deassign from DOMID_IO fails
    assert call(op="deassign_device", domid=DOMID_IO, sbdf=SBDF_10)["errno"] == "ENODEV"
    # detach: back to quarantine, not to dom0
    assert call(op="deassign_device", domid=1, sbdf=SBDF_10)["ok"]
    assert hv.owner(SBDF_10) == DOMID_IO
    assert call(op="deassign_device", domid=1, sbdf=SBDF_10)["errno"] == "ENODEV"
    assert call(op="deassign_device", domid=DOMID_IO, sbdf=SBDF_10)["ok"]
    assert hv.owner(SBDF_10) == 0


def test_hidden_device_starts_with_dom0_and_can_be_assigned(hv, call):
    assert hv.owner(SBDF_11) == 0
    # xl pci-assignable-remove on a hidden device fails: it was never quarantined
    assert call(op="deassign_device", domid=DOMID_IO, sbdf=SBDF_11)["errno"] == "ENODEV"
    assert call(op="assign_device", domid=1, sbdf=SBDF_11)["ok"]


def test_errors_for_domains_and_devices(hv, call):
    assert call(op="assign_device", domid=9, sbdf=SBDF_10)["errno"] == "ESRCH"
    assert call(op="iomem_permission", domid=9, first_mfn=1, nr_mfns=1, allow=True)["errno"] == "ESRCH"
    assert call(op="assign_device", domid=1, sbdf=0x1E << 3)["errno"] == "ENODEV"
    assert call(op="assign_device", domid=0, sbdf=SBDF_10)["errno"] == "EINVAL"
    assert call(op="assign_device", domid=1, sbdf=SBDF_10, flags=2)["errno"] == "EINVAL"
    assert call(op="frobnicate")["errno"] == "ENOSYS"
    assert call(op="domain_getinfo", domid=3)["info"]["hvm"] is True
    assert call(op="domain_getinfo", domid=3)["info"]["paused"] is True
    assert call(op="domain_getinfo", domid=4)["errno"] == "ESRCH"


def test_permissions_and_pirqs(hv, call):
    assert call(op="iomem_permission", domid=1, first_mfn=0xFE000, nr_mfns=0x100, allow=True)["ok"]
    assert call(op="ioport_permission", domid=1, first_port=0xC000, nr_ports=0x40, allow=True)["ok"]
    assert call(op="ioport_permission", domid=1, first_port=0xFFFF, nr_ports=2, allow=True)["errno"] == "EINVAL"
    assert call(op="iomem_permission", domid=1, first_mfn=5, nr_mfns=0, allow=True)["errno"] == "EINVAL"
    assert call(op="physdev_map_pirq", domid=1, index=11, pirq=11) == {"ok": True, "pirq": 11}
    assert call(op="physdev_map_pirq", domid=1, index=11, pirq=12)["errno"] == "EEXIST"
    assert call(op="irq_permission", domid=1, pirq=11, allow=True)["ok"]
    assert hv.permissions(1) == {"iomem": [(0xFE000, 0xFE0FF)], "ioport": [(0xC000, 0xC03F)],
                                 "irq": [(11, 11)], "pirqs": {11: 11}}
    assert call(op="iomem_permission", domid=1, first_mfn=0xFE000, nr_mfns=0x100, allow=False)["ok"]
    assert call(op="physdev_unmap_pirq", domid=1, pirq=11)["ok"]
    assert call(op="physdev_unmap_pirq", domid=1, pirq=11)["errno"] == "EINVAL"
    assert hv.permissions(1)["iomem"] == [] and hv.permissions(1)["pirqs"] == {}


def test_every_call_is_recorded(hv, call):
    call(op="assign_device", domid=2, sbdf=SBDF_10)
    call(op="iomem_permission", domid=1, first_mfn=1, nr_mfns=2, allow=True)
    assert [(g["op"], g["args"].get("domid"), g["result"]) for g in hv.host.grants] == [
        ("assign_device", 2, "EOPNOTSUPP"), ("iomem_permission", 1, "ok")]
    assert all(isinstance(g["time"], float) for g in hv.host.grants)


def test_bad_request_lines(hv, call):
    call.f.write(b"not json\n")
    call.f.flush()
    r = json.loads(call.f.readline())
    assert r["ok"] is False and r["errno"] == "EINVAL"
    # the connection survives a bad line
    assert call(op="domain_getinfo", domid=0)["ok"]


def test_physinfo_capabilities_with_and_without_iommu(hv, tmp_path):
    caps = hv.call("physinfo", {})["physinfo"]["capabilities"]
    # pv hvm directio hap shadow iommu_hap_pt_share gnttab-v1 gnttab-v2
    assert caps == 0b1100111111
    host = types.SimpleNamespace(paths={"hypervisor": str(tmp_path / "off")}, scenario=dict(SCENARIO, iommu=False),
                                 grants=[], loop=None)
    off = Hypervisor(host)
    assert off.call("physinfo", {})["physinfo"]["capabilities"] == 0b1100011011
    for op, args in (("assign_device", {"domid": 1, "sbdf": SBDF_10, "flags": 0}),
                     ("assign_device", {"domid": DOMID_IO, "sbdf": SBDF_10, "flags": 0}),
                     ("test_assign_device", {"domid": 1, "sbdf": SBDF_10}),
                     ("deassign_device", {"domid": 1, "sbdf": SBDF_10})):
        with pytest.raises(HvError) as ei:
            off.call(op, args)
        assert ei.value.name == "EOPNOTSUPP", op
    assert off.owner(SBDF_10) == 0

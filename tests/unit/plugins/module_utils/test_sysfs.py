# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_sysfs against xensim's FUSE sysfs (real files, the kernel's semantics)."""

from __future__ import annotations

import errno
import os
import sys
import time
import types

import pytest

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf
from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError, SysfsError
from ansible_collections.xen.pci.plugins.module_utils._sysfs import Sysfs, normalise_bdf, sbdf_of

_XENSIM = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "tools", "xensim"))
if os.path.isdir(_XENSIM) and _XENSIM not in sys.path:
    sys.path.insert(0, _XENSIM)
sysfs_sim = pytest.importorskip("xensim.sysfs", reason="xensim (tools/xensim) is not importable")

DEVICES = [
    {"bdf": "00:10.0", "vendor": 0x1234, "device": 0x11E8, "class": 0x00FF00, "driver": None,
     "resources": [[0xFE000000, 0xFE0FFFFF, 0x40200]], "irq": 11, "reset": True, "iommu_group": 4},
    {"bdf": "00:11.0", "vendor": 0x1B36, "device": 0x0005, "class": 0x00FF00, "hidden": True, "irq": 10},
    {"bdf": "00:12.0", "vendor": 0x8086, "device": 0x100E, "class": 0x020000, "driver": "e1000",
     "resources": [[0xFEB80000, 0xFEB9FFFF, 0x40200], [0xC040, 0xC07F, 0x40101]], "irq": 11},
]


def start_fs(tmp_path, devices=None, **scenario):
    why = sysfs_sim.SysfsFS.available()
    if why:
        pytest.skip("FUSE sysfs cannot run here: %s" % why)
    scenario["devices"] = DEVICES if devices is None else devices
    host = types.SimpleNamespace(paths={"sysfs_root": str(tmp_path / "sys")}, scenario=scenario, loop=None)
    fs = sysfs_sim.SysfsFS(host)
    try:
        fs.start_sync()
    except RuntimeError as exc:
        pytest.skip("FUSE cannot mount here: %s" % exc)
    return fs


@pytest.fixture
def fs(tmp_path):
    fs = start_fs(tmp_path)
    yield fs
    fs.stop_sync()


@pytest.fixture
def sysfs(fs):
    return Sysfs(fs.root, timeout=5)


def test_normalise_and_sbdf():
    assert normalise_bdf("00:10.0") == "0000:00:10.0"
    assert normalise_bdf("0001:0A:1f.7") == "0001:0a:1f.7"
    assert normalise_bdf(Bdf(1, 0x0A, 0x1F, 7)) == "0001:0a:1f.7"
    assert sbdf_of("0001:03:01.2") == (1 << 16) | (3 << 8) | (1 << 3) | 2 == Bdf.parse("0001:03:01.2").sbdf
    assert sbdf_of(Bdf(0, 0, 0x10, 0)) == 0x80
    with pytest.raises(SysfsError):
        normalise_bdf("00:20")
    # One grammar with _bdf: the slot is bounded (the old pattern let 00:20.0 through), no blanks.
    for bad in ("00:20.0", " 00:10.0", "00:10.8", "new_slot", None):
        with pytest.raises(SysfsError) as exc:
            sbdf_of(bad)
        assert isinstance(exc.value.__cause__, SpecError) and exc.value.details["device"] == str(bad)
    with pytest.raises(SysfsError, match="slot is out of range"):
        normalise_bdf("00:20.0")


def test_reads_a_device(sysfs):
    dev = sysfs.device("00:12.0")
    assert (dev.bdf, dev.vendor, dev.device, dev.klass) == ("0000:00:12.0", 0x8086, 0x100E, 0x020000)
    assert dev.driver == "e1000"
    # libxl's form, whatever the mount point
    assert dev.driver_path == "/sys/bus/pci/drivers/e1000"
    assert dev.resources[:2] == [(0xFEB80000, 0xFEB9FFFF, 0x40200), (0xC040, 0xC07F, 0x40101)]
    assert len(dev.resources) == 13
    assert dev.irq == 11
    assert dev.reset_method is None
    assert dev.enabled is True
    d10 = sysfs.device("0000:00:10.0")
    assert d10.reset_method == "reset" and d10.iommu_group == 4 and d10.driver is None
    assert d10.to_dict()["vendor"] == "0x1234"
    assert sysfs.devices() == ["0000:00:10.0", "0000:00:11.0", "0000:00:12.0"]


def test_missing_device_is_named(sysfs):
    with pytest.raises(SysfsError) as ei:
        sysfs.device("00:1e.0")
    assert "0000:00:1e.0" in ei.value.msg
    assert ei.value.details["errno"] == "ENOENT"


def test_hidden_device_is_already_assignable(sysfs, fs):
    assert sysfs.pciback_slots() == ["0000:00:11.0"]
    assert sysfs.pciback_devices() == ["0000:00:11.0"]
    assert sysfs.bind_pciback("00:11.0") == []          # nothing to do
    assert fs.slots() == ["0000:00:11.0"]


def test_make_assignable_and_give_back(sysfs, fs):
    bdf = "0000:00:12.0"
    driver_path = sysfs.unbind(bdf)
    assert driver_path == "/sys/bus/pci/drivers/e1000"
    assert fs.driver_of(bdf) is None
    assert sysfs.unbind(bdf) is None                   # idempotent: no driver now
    assert sysfs.bind_pciback(bdf) == ["new_slot", "bind"]
    assert fs.is_bound(bdf, "pciback")
    assert sysfs.bind_pciback(bdf) == []               # idempotent
    assert fs.slots().count(bdf) == 1
    assert sysfs.set_permissive(bdf) is True
    assert sysfs.set_permissive(bdf) is False
    assert fs.is_permissive(bdf)
    assert sysfs.unbind_pciback(bdf) == ["unbind", "remove_slot"]
    assert sysfs.unbind_pciback(bdf) == []
    assert sysfs.bind_driver(bdf, driver_path) is True
    assert fs.driver_of(bdf) == "e1000"
    assert sysfs.bind_driver(bdf, driver_path) is False


def test_slot_listed_but_unbound_is_not_added_twice(sysfs, fs):
    bdf = "0000:00:10.0"
    sysfs.write(sysfs.pciback_path("new_slot"), bdf)
    assert sysfs.bind_pciback(bdf) == ["bind"]
    assert fs.slots().count(bdf) == 1


def test_bind_pciback_refuses_a_device_held_by_a_driver(sysfs, fs):
    with pytest.raises(SysfsError) as ei:
        sysfs.bind_pciback("00:12.0")
    assert ei.value.details["errno"] == "EBUSY"
    assert "e1000" in ei.value.msg
    assert fs.driver_of("00:12.0") == "e1000"


def test_kernel_errors_name_device_file_and_errno(sysfs):
    with pytest.raises(SysfsError) as ei:
        sysfs.write(sysfs.pciback_path("bind"), "0000:00:10.0", "0000:00:10.0")
    err = ei.value
    assert err.details["errno"] == "ENODEV"
    assert err.details["file"].endswith("/bus/pci/drivers/pciback/bind")
    assert err.details["device"] == "0000:00:10.0"
    assert "ENODEV" in err.msg and "0000:00:10.0" in err.msg
    with pytest.raises(SysfsError) as ei:
        sysfs.set_permissive("00:10.0")          # not bound to pciback
    assert ei.value.details["errno"] == "ENODEV"


def test_reset_methods(sysfs, fs, tmp_path):
    assert sysfs.reset("00:10.0") == "reset"
    assert fs.resets("00:10.0") == ["reset"]
    with pytest.raises(SysfsError) as ei:
        sysfs.reset("00:12.0")
    assert ei.value.details["reset_method"] is None
    assert "no reset" in ei.value.msg


def test_do_flr_is_preferred_when_pciback_has_it(tmp_path):
    fs = start_fs(tmp_path, pciback_do_flr=True)
    try:
        s = Sysfs(fs.root, timeout=5)
        assert s.reset_method("00:11.0") == "do_flr"
        assert s.reset("00:11.0") == "do_flr"
        assert fs.resets("00:11.0") == ["do_flr"]
    finally:
        fs.stop_sync()


def test_a_blocked_write_is_bounded(fs):
    s = Sysfs(fs.root, timeout=0.3)
    fs.inject("/unbind", delay=2.0)
    started = time.monotonic()
    with pytest.raises(SysfsError) as ei:
        s.unbind("00:12.0")
    assert time.monotonic() - started < 1.5
    assert ei.value.details["errno"] == "ETIMEDOUT"
    assert "did not return" in ei.value.msg
    fs.inject("/unbind")


def test_injected_errno_passes_through(fs, sysfs):
    fs.inject("/bind", errno_value=errno.EIO)
    sysfs.unbind("00:12.0")
    with pytest.raises(SysfsError) as ei:
        sysfs.bind_pciback("00:12.0")
    assert ei.value.details["errno"] == "EIO"
    fs.inject("/bind")


def test_no_pciback(tmp_path):
    root = tmp_path / "plain"
    (root / "bus/pci/devices").mkdir(parents=True)
    s = Sysfs(str(root))
    assert not s.pciback_loaded()
    with pytest.raises(SysfsError) as ei:
        s.pciback_slots()
    assert "not loaded" in ei.value.msg

"""The FUSE sysfs, driven through plain file I/O as the toolstack does."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from xensim.faults import Faults  # noqa: E402
from xensim.sysfs import SysfsFS  # noqa: E402

SCENARIO = {
    "devices": [
        {"bdf": "00:10.0", "vendor": 0x1234, "device": 0x11E8, "class": 0x00FF00, "driver": None,
         "resources": [[0xFE000000, 0xFE0FFFFF, 0x40200]], "irq": 11, "reset": True, "iommu_group": 4},
        {"bdf": "0000:00:11.0", "vendor": 0x1B36, "device": 0x0005, "class": 0x00FF00, "hidden": True,
         "resources": [[0xC000, 0xC03F, 0x40101], [0xFE100000, 0xFE100FFF, 0x40200]], "irq": 10,
         "iommu_group": 5},
        {"bdf": "00:12.0", "vendor": 0x8086, "device": 0x100E, "class": 0x020000, "driver": "e1000",
         "resources": [[0xFEB80000, 0xFEB9FFFF, 0x40200], [0xC040, 0xC07F, 0x40101]], "irq": 11},
    ],
}


def make_host(tmp_path, scenario=None, **extra):
    host = types.SimpleNamespace(paths={"sysfs_root": str(tmp_path / "sys")},
                                 scenario=scenario or SCENARIO, loop=None, **extra)
    return host


def mounted(host):
    """A SysfsFS for ``host``, mounted (skips where FUSE cannot run), then
    unmounted: the body of the fixtures below."""
    why = SysfsFS.available()
    if why:
        pytest.skip("FUSE sysfs cannot run here: %s" % why)
    fs = SysfsFS(host)
    try:
        fs.start_sync()
    except RuntimeError as exc:
        pytest.skip("FUSE cannot mount here: %s" % exc)
    yield fs
    fs.stop_sync()
    assert not os.path.ismount(fs.root)


@pytest.fixture
def sysfs(tmp_path):
    yield from mounted(make_host(tmp_path))


def p(fs, *parts):
    return os.path.join(fs.root, *parts)


def write(path, data):
    """One write(2), like the kernel's store; returns the errno or 0."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        return exc.errno
    try:
        os.write(fd, data.encode())
        return 0
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)


def read(path):
    with open(path) as f:
        return f.read()


DEV = "bus/pci/devices"
PB = "bus/pci/drivers/pciback"


def test_tree_looks_like_linux(sysfs):
    assert sorted(os.listdir(p(sysfs, DEV))) == ["0000:00:10.0", "0000:00:11.0", "0000:00:12.0"]
    assert os.readlink(p(sysfs, DEV, "0000:00:10.0")) == "../../../devices/pci0000:00/0000:00:10.0"
    d = p(sysfs, DEV, "0000:00:10.0")
    assert read(d + "/vendor") == "0x1234\n"
    assert read(d + "/device") == "0x11e8\n"
    assert read(d + "/class") == "0x00ff00\n"
    assert read(d + "/subsystem_vendor") == "0x1af4\n"
    assert read(d + "/irq") == "11\n"
    lines = read(d + "/resource").splitlines()
    assert len(lines) == 13     # PCI_BRIDGE_RESOURCES with CONFIG_PCI_IOV
    assert lines[0] == "0x00000000fe000000 0x00000000fe0fffff 0x0000000000040200"
    assert lines[1] == "0x%016x 0x%016x 0x%016x" % (0, 0, 0)
    assert os.path.exists(d + "/reset")
    assert not os.path.exists(p(sysfs, DEV, "0000:00:12.0", "reset"))
    assert not os.path.lexists(d + "/driver")
    assert os.readlink(d + "/iommu_group") == "../../../kernel/iommu_groups/4"
    assert os.listdir(p(sysfs, "kernel/iommu_groups/4/devices")) == ["0000:00:10.0"]
    # driver link resolves to the driver directory, as libxl's realpath() expects
    assert os.path.realpath(p(sysfs, DEV, "0000:00:12.0", "driver")) == os.path.realpath(p(sysfs, "bus/pci/drivers/e1000"))
    assert read(p(sysfs, DEV, "0000:00:12.0", "enable")) == "1\n"


def test_pciback_files_and_hidden_device(sysfs):
    names = set(os.listdir(p(sysfs, PB)))
    assert {"bind", "unbind", "new_id", "remove_id", "new_slot", "remove_slot", "slots", "permissive",
            "quirks", "irq_handlers", "irq_handler_state"} <= names
    assert "do_flr" not in names          # upstream Linux has none
    assert "0000:00:11.0" in names        # hidden at boot: bound
    assert read(p(sysfs, PB, "slots")) == "0000:00:11.0\n"
    assert os.readlink(p(sysfs, DEV, "0000:00:11.0", "driver")) == "../../../bus/pci/drivers/pciback"
    assert sysfs.is_bound("00:11.0", "pciback")
    assert read(p(sysfs, PB, "irq_handlers")) == "0000:00:11.0:off:not acking:0\n"


def test_write_only_and_read_only_files(sysfs):
    with pytest.raises(PermissionError):
        open(p(sysfs, PB, "bind")).close()
    assert write(p(sysfs, DEV, "0000:00:10.0", "vendor"), "1") == errno.EACCES
    # libxl opens do_flr with O_WRONLY: ENOENT tells it to try the reset file
    assert write(p(sysfs, PB, "do_flr"), "0000:00:11.0") == errno.ENOENT
    # O_CREAT (a shell ">") on a missing attribute is refused like kernfs does
    with pytest.raises(PermissionError):
        open(p(sysfs, PB, "do_flr"), "w").close()


def test_assignable_add_sequence_is_synchronous(sysfs):
    bdf = "0000:00:12.0"
    # unbind from e1000: the driver link is gone when write() returns
    assert write(p(sysfs, "bus/pci/drivers/e1000/unbind"), bdf + "\n") == 0
    assert not os.path.lexists(p(sysfs, DEV, bdf, "driver"))
    assert sysfs.driver_of(bdf) is None
    # bind before new_slot: pcistub_probe rejects the device
    assert write(p(sysfs, PB, "bind"), bdf) == errno.ENODEV
    assert write(p(sysfs, PB, "new_slot"), bdf) == 0
    assert read(p(sysfs, PB, "slots")).splitlines() == ["0000:00:11.0", bdf]
    assert write(p(sysfs, PB, "bind"), bdf) == 0
    assert os.readlink(p(sysfs, DEV, bdf, "driver")).endswith("/drivers/pciback")
    assert bdf in os.listdir(p(sysfs, PB))
    assert read(p(sysfs, DEV, bdf, "enable")) == "0\n"
    # binding again: the device already has a driver
    assert write(p(sysfs, PB, "bind"), bdf) == errno.EBUSY
    # and the other way round, with rebind to e1000
    assert write(p(sysfs, PB, "unbind"), bdf) == 0
    assert write(p(sysfs, PB, "remove_slot"), bdf) == 0
    assert write(p(sysfs, "bus/pci/drivers/e1000/bind"), bdf) == 0
    assert os.readlink(p(sysfs, DEV, bdf, "driver")).endswith("/drivers/e1000")


def test_kernel_errnos(sysfs):
    # unbind of a device with no driver, or from a driver that does not own it
    assert write(p(sysfs, PB, "unbind"), "0000:00:10.0") == errno.ENODEV
    assert write(p(sysfs, "bus/pci/drivers/e1000/unbind"), "0000:00:11.0") == errno.ENODEV
    # a device that does not exist; a name without segment is not a device name
    assert write(p(sysfs, PB, "bind"), "0000:00:1e.0") == errno.ENODEV
    assert write(p(sysfs, PB, "unbind"), "00:11.0") == errno.ENODEV
    # e1000 does not match a foreign vendor/device
    assert write(p(sysfs, "bus/pci/drivers/e1000/bind"), "0000:00:10.0") == errno.ENODEV
    # new_slot parsing and ranges
    assert write(p(sysfs, PB, "new_slot"), "garbage") == errno.EINVAL
    assert write(p(sysfs, PB, "new_slot"), "0000:00:20.0") == errno.EINVAL
    # remove_slot of a slot not listed
    assert write(p(sysfs, PB, "remove_slot"), "0000:00:10.0") == errno.ENOENT
    # permissive on a device pciback does not own
    assert write(p(sysfs, PB, "permissive"), "0000:00:10.0") == errno.ENODEV
    assert write(p(sysfs, PB, "irq_handler_state"), "0000:00:10.0") == errno.ENOENT
    # reset accepts only 1
    assert write(p(sysfs, DEV, "0000:00:10.0", "reset"), "2") == errno.EINVAL
    assert write(p(sysfs, DEV, "0000:00:10.0", "reset"), "1\n") == 0
    assert sysfs.resets("0000:00:10.0") == ["reset"]
    # enable with a driver bound
    assert write(p(sysfs, DEV, "0000:00:12.0", "enable"), "0") == errno.EBUSY
    assert write(p(sysfs, DEV, "0000:00:10.0", "enable"), "0") == errno.EIO
    # new_id on pciback: its id table already matches everything
    assert write(p(sysfs, PB, "new_id"), "1234 11e8") == errno.EEXIST
    assert write(p(sysfs, PB, "new_id"), "1234") == errno.EINVAL
    assert write(p(sysfs, PB, "remove_id"), "1234 11e8") == errno.ENODEV


def test_new_slot_twice_duplicates_and_remove_slot_drops_all(sysfs):
    bdf = "0000:00:10.0"
    assert write(p(sysfs, PB, "new_slot"), bdf) == 0
    assert write(p(sysfs, PB, "new_slot"), "00:10.0") == 0      # domain optional
    assert read(p(sysfs, PB, "slots")).splitlines().count(bdf) == 2
    assert write(p(sysfs, PB, "remove_slot"), bdf) == 0
    assert bdf not in read(p(sysfs, PB, "slots"))
    # a wildcard function adds the 8 functions of the slot
    assert write(p(sysfs, PB, "new_slot"), "0000:00:13.*") == 0
    assert [s for s in read(p(sysfs, PB, "slots")).splitlines() if s.startswith("0000:00:13.")] == [
        "0000:00:13.%d" % f for f in range(8)]


def test_permissive_and_its_lifetime(sysfs):
    bdf = "0000:00:11.0"
    assert read(p(sysfs, PB, "permissive")) == ""
    assert write(p(sysfs, PB, "permissive"), bdf) == 0
    assert read(p(sysfs, PB, "permissive")) == bdf + "\n"
    # the flag lives in pciback's per-device data: unbind drops it
    assert write(p(sysfs, PB, "unbind"), bdf) == 0
    assert write(p(sysfs, PB, "bind"), bdf) == 0
    assert read(p(sysfs, PB, "permissive")) == ""
    assert "pciback-release" in sysfs.resets(bdf)


def test_new_id_binds_matching_unbound_devices(sysfs):
    assert write(p(sysfs, "bus/pci/drivers/e1000/new_id"), "1234 11e8") == 0
    assert sysfs.driver_of("0000:00:10.0") == "e1000"
    assert write(p(sysfs, "bus/pci/drivers/e1000/new_id"), "1234 11e8") == errno.EEXIST
    assert write(p(sysfs, "bus/pci/drivers/e1000/remove_id"), "1234 11e8") == 0


def test_quirks(sysfs):
    assert write(p(sysfs, PB, "quirks"), "0000:00:11.0-10:4:ffffffff") == 0
    assert read(p(sysfs, PB, "quirks")) == "00:11.0\n\t1b36:0005:1af4:1100\n\t\t00000010:4:ffffffff\n"
    assert write(p(sysfs, PB, "quirks"), "0000:00:11.0-10:1:1ff") == errno.EINVAL
    assert write(p(sysfs, PB, "quirks"), "0000:00:10.0-10:4:ff") == errno.ENODEV


def test_listeners_and_host_callback_see_each_store(tmp_path):
    why = SysfsFS.available()
    if why:
        pytest.skip("FUSE sysfs cannot run here: %s" % why)
    seen = []
    host = make_host(tmp_path, on_sysfs_change=seen.append)
    fs = SysfsFS(host)
    fs.start_sync()
    try:
        local = []
        fs.add_listener(local.append)
        assert write(p(fs, PB, "unbind"), "0000:00:11.0") == 0
        assert [(e.kind, e.bdf, e.driver) for e in local] == [("unbind", "0000:00:11.0", "pciback")]
        assert [(e.kind, e.bdf) for e in seen] == [("unbind", "0000:00:11.0")]
    finally:
        fs.stop_sync()


def test_blocked_store_and_clean_unmount(sysfs):
    # a fault makes unbind block like a kernel waiting in remove()
    sysfs.inject("/unbind", delay=0.5)
    started = time.monotonic()
    assert write(p(sysfs, PB, "unbind"), "0000:00:11.0") == 0
    assert time.monotonic() - started >= 0.45
    sysfs.inject("/unbind")
    sysfs.inject("/bind", errno_value=errno.EIO)
    assert write(p(sysfs, PB, "bind"), "0000:00:11.0") == errno.EIO
    sysfs.inject("/bind")
    # concurrent readers while writing never see a half state
    errors = []

    def reader():
        for _unused in range(50):
            text = read(p(sysfs, PB, "slots"))
            if text not in ("0000:00:11.0\n", ""):
                errors.append(text)

    t = threading.Thread(target=reader)
    t.start()
    for _unused in range(25):
        assert write(p(sysfs, PB, "remove_slot"), "0000:00:11.0") == 0
        assert write(p(sysfs, PB, "new_slot"), "0000:00:11.0") == 0
    t.join(10)
    assert not errors


# ------------------------------------------------------ the sysfs.write point

def background_write(path, data):
    """write() from another thread: (thread, result list)."""
    result = []
    t = threading.Thread(target=lambda: result.append(write(path, data)), daemon=True)
    t.start()
    return t, result


def test_sysfs_write_error_matches_file_and_bdf(sysfs):
    sysfs.faults.add("sysfs.write", "error", file="pciback/unbind", bdf="0000:00:11.0", errno="EIO")
    assert write(p(sysfs, PB, "unbind"), "00:11.0\n") == errno.EIO
    assert sysfs.is_bound("0000:00:11.0")                  # nothing changed
    assert write(p(sysfs, PB, "unbind"), "0000:00:12.0") == errno.ENODEV   # other device: the store ran
    assert write(p(sysfs, "bus/pci/drivers/e1000/unbind"), "0000:00:11.0") == errno.ENODEV
    # ctx: the file relative to the root, the BDF normalised
    assert sysfs.faults.log == [("sysfs.write", "error", {"file": "bus/pci/drivers/pciback/unbind",
                                                          "bdf": "0000:00:11.0"})]


def test_sysfs_write_ctx_of_a_device_attribute_and_of_other_data(sysfs):
    rule = sysfs.faults.add("sysfs.write", "error", file="reset", errno="EBUSY")
    assert write(p(sysfs, DEV, "0000:00:10.0", "reset"), "1") == errno.EBUSY
    assert sysfs.resets("0000:00:10.0") == []
    sysfs.faults.remove(rule)
    assert write(p(sysfs, DEV, "0000:00:10.0", "reset"), "1") == 0
    assert sysfs.resets("0000:00:10.0") == ["reset"]
    # a whole path is an exact match; data that is not a BDF gives no bdf
    sysfs.faults.add("sysfs.write", "error", file="/bus/pci/drivers/pciback/new_id", errno="ENOMEM")
    assert write(p(sysfs, PB, "new_id"), "1234 11e8") == errno.ENOMEM
    assert write(p(sysfs, "bus/pci/drivers/e1000/new_id"), "1234 11e8") == 0
    assert sysfs.faults.log[0][2] == {"file": "bus/pci/devices/0000:00:10.0/reset", "bdf": "0000:00:10.0"}
    assert sysfs.faults.log[-1][2] == {"file": "bus/pci/drivers/pciback/new_id", "bdf": None}


def test_sysfs_write_delay_then_the_store_runs(sysfs):
    sysfs.faults.add("sysfs.write", "delay", seconds=0.3, file="unbind", times=1)
    started = time.monotonic()
    assert write(p(sysfs, PB, "unbind"), "0000:00:11.0") == 0
    assert time.monotonic() - started >= 0.3
    assert not sysfs.is_bound("0000:00:11.0")


def test_sysfs_write_hang_until_the_fault_is_removed(sysfs):
    rule = sysfs.faults.add("sysfs.write", "hang", file="pciback/unbind")
    t, result = background_write(p(sysfs, PB, "unbind"), "0000:00:11.0")
    t.join(0.3)
    assert t.is_alive() and result == [] and sysfs.is_bound("0000:00:11.0")
    # the rest of the tree still answers meanwhile
    assert read(p(sysfs, PB, "slots")) == "0000:00:11.0\n"
    sysfs.faults.remove(rule)
    t.join(10)
    assert result == [0] and not sysfs.is_bound("0000:00:11.0")


def test_sysfs_write_hang_ends_with_eio_when_the_host_stops(tmp_path):
    why = SysfsFS.available()
    if why:
        pytest.skip("FUSE sysfs cannot run here: %s" % why)
    fs = SysfsFS(make_host(tmp_path))
    fs.start_sync()
    try:
        fs.faults.add("sysfs.write", "hang", file="new_slot")
        t, result = background_write(p(fs, PB, "new_slot"), "0000:00:10.0")
        t.join(0.3)
        assert t.is_alive()
    finally:
        fs.stop_sync()
    t.join(30)
    assert not t.is_alive() and result in ([errno.EIO], [errno.ENOTCONN])
    assert "0000:00:10.0" not in fs.slots()


def test_sysfs_uses_the_hosts_fault_registry(tmp_path):
    why = SysfsFS.available()
    if why:
        pytest.skip("FUSE sysfs cannot run here: %s" % why)
    faults = Faults()
    fs = SysfsFS(make_host(tmp_path, faults=faults))
    fs.start_sync()
    try:
        faults.add("sysfs.write", "error", file="bind", errno="EPERM")
        fs.inject("/unbind", errno_value=errno.EIO)          # the shorthand lands there too
        assert write(p(fs, PB, "bind"), "0000:00:10.0") == errno.EPERM
        assert write(p(fs, PB, "unbind"), "0000:00:11.0") == errno.EIO
        assert [r.action for r in faults.rules] == ["error", "error"]
        fs.inject("/unbind")
        assert len(faults.rules) == 1
    finally:
        fs.stop_sync()


NESTED = {
    "devices": [
        {"bdf": "00:1c.0", "vendor": 0x8086, "device": 0xA110, "class": 0x060400, "driver": "pcieport"},
        {"bdf": "01:00.0", "vendor": 0x8086, "device": 0x100E, "class": 0x020000, "driver": "pciback",
         "parent": "0000:00:1c.0", "subsystem_vendor": 0x8086, "subsystem_device": 0x0001, "iommu_group": 7,
         "serial": 0x0011223344556677, "label": "NIC 2", "revision": 3},
        {"bdf": "00:1d.0", "vendor": 0x8086, "device": 0x100E, "class": 0x020000, "pcie": False},
    ],
}


@pytest.fixture
def nested(tmp_path):
    yield from mounted(make_host(tmp_path, NESTED))


def test_devices_behind_a_bridge_live_in_its_directory(nested):
    fs = nested
    link = p(fs, "bus/pci/devices/0000:01:00.0")
    assert os.readlink(link) == "../../../devices/pci0000:00/0000:00:1c.0/0000:01:00.0"
    real = os.path.realpath(link)
    assert real == os.path.realpath(p(fs, "devices/pci0000:00/0000:00:1c.0/0000:01:00.0"))
    # the root bus lists the bridge, not its child; the bridge lists the child beside its attributes
    assert sorted(os.listdir(p(fs, "devices/pci0000:00"))) == ["0000:00:1c.0", "0000:00:1d.0"]
    assert "0000:01:00.0" in os.listdir(p(fs, "devices/pci0000:00/0000:00:1c.0"))
    assert not os.path.exists(p(fs, "devices/pci0000:00/0000:01:00.0"))
    assert not os.path.exists(p(fs, "devices/pci0000:01"))
    # relative links out of the nested directory still land at the root
    assert os.path.realpath(os.path.join(real, "driver")) == os.path.realpath(p(fs, "bus/pci/drivers/pciback"))
    assert os.path.realpath(os.path.join(real, "subsystem")) == os.path.realpath(p(fs, "bus/pci"))
    assert os.path.realpath(os.path.join(real, "iommu_group")) == os.path.realpath(p(fs, "kernel/iommu_groups/7"))
    assert os.path.realpath(p(fs, "bus/pci/drivers/pciback/0000:01:00.0")) == real
    assert os.path.realpath(p(fs, "kernel/iommu_groups/7/devices/0000:01:00.0")) == real


def test_label_only_where_the_firmware_gives_one(nested):
    fs = nested
    with open(p(fs, "bus/pci/devices/0000:01:00.0/label")) as f:
        assert f.read() == "NIC 2\n"
    assert "label" not in os.listdir(p(fs, "bus/pci/devices/0000:00:1d.0"))
    assert not os.path.exists(p(fs, "bus/pci/devices/0000:00:1d.0/label"))


def test_config_space_agrees_with_the_id_files(nested):
    fs = nested
    path = p(fs, "bus/pci/devices/0000:01:00.0/config")
    assert os.path.getsize(path) == 4096
    with open(path, "rb") as f:
        cfg = f.read()
    assert len(cfg) == 4096
    assert int.from_bytes(cfg[0:2], "little") == 0x8086 and int.from_bytes(cfg[2:4], "little") == 0x100E
    assert cfg[8] == 3 and int.from_bytes(cfg[9:12], "little") == 0x020000 and cfg[0x0E] == 0
    assert int.from_bytes(cfg[0x2C:0x2E], "little") == 0x8086 and int.from_bytes(cfg[0x2E:0x30], "little") == 0x0001
    assert cfg[0x06] & 0x10 and _cap(cfg, 0x10)                   # capability list with PCI Express
    header = int.from_bytes(cfg[0x100:0x104], "little")
    assert header & 0xFFFF == 0x0003 and header >> 20 == 0
    assert int.from_bytes(cfg[0x104:0x10C], "little") == 0x0011223344556677
    # a read at an offset pages through the same bytes
    with open(path, "rb") as f:
        f.seek(0x104)
        assert f.read(8) == cfg[0x104:0x10C]
    with open(p(fs, "bus/pci/devices/0000:00:1c.0/config"), "rb") as f:
        bridge = f.read()
    assert bridge[0x0E] == 1 and int.from_bytes(bridge[0x100:0x104], "little") == 0
    with open(p(fs, "bus/pci/devices/0000:00:1d.0/config"), "rb") as f:
        conventional = f.read()
    assert len(conventional) == 256 and _cap(conventional, 0x10) is None and _cap(conventional, 0x01)
    assert write(path, b"\0") == errno.EACCES


RESET_SCENARIO = {
    "pciback": "builtin",
    "devices": [
        {"bdf": "00:10.0", "vendor": 0x1234, "device": 0x11E8, "reset_method": ["flr", "pm"], "irq": 11},
        {"bdf": "00:10.1", "vendor": 0x1234, "device": 0x11E9, "reset_method": [], "reset": False},
        {"bdf": "00:1c.0", "vendor": 0x8086, "device": 0x2448, "class": 0x060400, "header_type": 1,
         "reset_method": ["bus"]},
    ],
}


def _cap(cfg, wanted):
    at = cfg[0x34]
    while at:
        if cfg[at] == wanted:
            return at
        at = cfg[at + 1]
    return None


@pytest.fixture
def reset_fs(tmp_path):
    yield from mounted(make_host(tmp_path / "reset", RESET_SCENARIO))


def test_reset_files_and_config_space_agree(reset_fs):
    fs = reset_fs
    d10 = p(fs, "bus/pci/devices/0000:00:10.0")
    with open(os.path.join(d10, "reset_method"), encoding="ascii") as f:
        assert f.read() == "flr pm\n"
    with open(os.path.join(d10, "config"), "rb") as f:
        cfg = f.read()
    assert len(cfg) == 4096 and int.from_bytes(cfg[0:2], "little") == 0x1234
    assert cfg[0x0E] == 0x80          # endpoint, multi-function (00:10.1 shares the slot)
    exp, pm = _cap(cfg, 0x10), _cap(cfg, 0x01)
    assert int.from_bytes(cfg[exp + 4:exp + 8], "little") & (1 << 28)
    assert not cfg[pm + 4] & 0x08      # No_Soft_Reset clear: a PM reset resets
    d11 = p(fs, "bus/pci/devices/0000:00:10.1")
    assert not os.path.exists(os.path.join(d11, "reset")) and not os.path.exists(os.path.join(d11, "reset_method"))
    with open(os.path.join(d11, "config"), "rb") as f:
        cfg = f.read()
    exp, pm = _cap(cfg, 0x10), _cap(cfg, 0x01)
    assert not int.from_bytes(cfg[exp + 4:exp + 8], "little") & (1 << 28)
    assert cfg[pm + 4] & 0x08
    with open(p(fs, "bus/pci/devices/0000:00:1c.0/config"), "rb") as f:
        assert f.read()[0x0E] & 0x7F == 1
    # an empty reset_method disables every method: a reset is then ENOTTY
    assert write(os.path.join(d10, "reset_method"), "\n") == 0
    assert write(os.path.join(d10, "reset"), "1") == errno.ENOTTY
    assert write(os.path.join(d10, "reset_method"), "bus\n") == errno.EINVAL
    assert write(os.path.join(d10, "reset_method"), "default\n") == 0
    assert write(os.path.join(d10, "reset"), "1") == 0


def test_builtin_pciback_has_no_initstate(reset_fs, sysfs):
    assert sorted(os.listdir(p(reset_fs, "module/xen_pciback"))) == ["parameters"]
    assert sorted(os.listdir(p(sysfs, "module/xen_pciback"))) == ["initstate", "parameters", "refcnt"]
    with open(p(sysfs, "module/xen_pciback/initstate"), encoding="ascii") as f:
        assert f.read() == "live\n"

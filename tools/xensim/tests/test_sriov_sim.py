"""SR-IOV in the simulator: the scenario's ``sriov:`` key, the PF's
sriov_* files and virtfn links, VFs appearing and going through
sriov_numvfs with the kernel's errno values, and the host staying
consistent (pciback, the hypervisor) as they do."""

import errno
import os
import time

import pytest

from test_sysfs_sim import make_host, mounted, p, read, write
from xensim import scenario as sc
from xensim.scenario import ScenarioError
from xensim.sysfs import PCIBACK, PciModel, SysfsFS, SysfsWriteError, config_space, vf_bdf

PF = "0000:03:00.0"
# 82576-like: VFs from routing id +0x80, every second function.
IGB = {"bdf": PF, "vendor": 0x8086, "device": 0x10C9, "class": 0x020000, "driver": "igb",
       "iommu_group": 7, "revision": 1,
       "sriov": {"totalvfs": 7, "vf_device": 0x10CA, "offset": 0x80, "stride": 2, "vf_driver": "igbvf"}}
OTHER = {"bdf": "0000:00:10.0", "vendor": 0x1234, "device": 0x11E8, "iommu_group": 0}


def model(**sriov):
    pf = dict(IGB, sriov=dict(IGB["sriov"], **sriov))
    return PciModel([pf, OTHER])


def numvfs(m, value, bdf=PF):
    """The store's errno (0: success)."""
    try:
        m.set_numvfs(bdf, value.encode())
        return 0
    except SysfsWriteError as exc:
        return exc.errno


# ------------------------------------------------------------ addresses

@pytest.mark.parametrize("pf, offset, stride, index, vf", [
    ("0000:03:00.0", 0x80, 2, 0, "0000:03:10.0"),
    ("0000:03:00.0", 0x80, 2, 3, "0000:03:10.6"),
    ("0000:03:00.0", 0x80, 2, 4, "0000:03:11.0"),
    ("0000:03:00.0", 1, 1, 0, "0000:03:00.1"),
    ("0001:05:00.1", 0x100, 1, 2, "0001:06:00.3"),    # the next bus, same segment
])
def test_vf_addresses_follow_offset_and_stride(pf, offset, stride, index, vf):
    assert vf_bdf(pf, offset, stride, index) == vf


# ------------------------------------------------------------- scenario

SCEN = """
name: s
devices:
  - bdf: "03:00.0"
    vendor: 0x8086
    device: 0x10c9
    driver: igb
    sriov: {totalvfs: 7, vf_device: 0x10ca, offset: 0x80, stride: 2, vf_driver: igbvf}
  - {bdf: "00:10.0", vendor: 0x1234, device: 0x11e8}
"""


def test_scenario_sriov_defaults():
    s = sc.loads(SCEN.replace(", offset: 0x80, stride: 2, vf_driver: igbvf", ""))
    iov = s.device(PF).sriov
    assert (iov.totalvfs, iov.vf_device, iov.offset, iov.stride, iov.vf_driver, iov.numvfs,
            iov.configurable, iov.drivers_autoprobe) == (7, 0x10CA, 1, 1, None, 0, True, True)
    assert s.device("00:10.0").sriov is None
    assert sc.loads(SCEN).device(PF).sriov.vf_bdfs(PF, 2) == ["0000:03:10.0", "0000:03:10.2"]


@pytest.mark.parametrize("edit, message", [
    (("totalvfs: 7, ", ""), r"devices\[0000:03:00.0\]\.sriov\.totalvfs: missing"),
    (("vf_device: 0x10ca, ", ""), r"devices\[0000:03:00.0\]\.sriov\.vf_device: missing"),
    (("totalvfs: 7", "totalvfs: 0"), r"\.sriov\.totalvfs: 0 out of range \[1, 256\]"),
    (("totalvfs: 7", "totalvfs: 257"), r"\.sriov\.totalvfs: 257 out of range"),
    (("totalvfs: 7", "totalvfs: many"), r"\.sriov\.totalvfs: expected an integer"),
    (("vf_device: 0x10ca", "vf_device: 0x10000"), r"\.sriov\.vf_device: 65536 out of range"),
    (("stride: 2", "stride: 0"), r"\.sriov\.stride: 0 out of range"),
    (("offset: 0x80", "offset: 0"), r"\.sriov\.offset: 0 out of range"),
    (("vf_driver: igbvf", "vf_driver: 3"), r"\.sriov\.vf_driver: expected a non-empty string"),
    (("vf_driver: igbvf", "vf_driver: pciback"), r"\.sriov\.vf_driver: pciback seizes VFs"),
    (("vf_driver: igbvf", "numvfs: 8"), r"\.sriov\.numvfs: 8 is above totalvfs 7"),
    (("vf_driver: igbvf", "configurable: 1"), r"\.sriov\.configurable: expected true or false"),
    (("vf_driver: igbvf", "drivers_autoprobe: yes please"), r"\.sriov\.drivers_autoprobe: expected true or false"),
    (("vf_driver: igbvf", "colour: red"), r"devices\[0000:03:00.0\]\.sriov: unknown key\(s\) colour"),
    (("    driver: igb\n", "    driver: pciback\n"), None),        # numvfs 0: a PF seized by pciback is fine
    (("    sriov: {", "    pcie: false\n    sriov: {"), r"\.sriov: SR-IOV is a PCIe extended capability"),
    (('"00:10.0"', '"03:10.4"'), r"devices\[0000:03:00.0\]\.sriov: VF 2 at 0000:03:10.4 collides with device"),
    (("offset: 0x80", "offset: 0xff00"), r"\.sriov: VF 6's routing id 0x1020c is beyond bus 0xff"),
])
def test_scenario_sriov_errors_name_the_field(edit, message):
    text = SCEN.replace(*edit)
    if message is None:
        sc.loads(text)
        return
    with pytest.raises(ScenarioError, match=message):
        sc.loads(text)


def test_scenario_numvfs_needs_the_pf_driver_and_vfs_of_two_pfs_must_not_overlap():
    with pytest.raises(ScenarioError, match=r"\.sriov\.numvfs: VFs are enabled by the PF's own driver, not none"):
        sc.loads(SCEN.replace("    driver: igb\n", "").replace("vf_driver: igbvf", "numvfs: 1"))
    with pytest.raises(ScenarioError, match=r"\.sriov\.numvfs: VFs are enabled by the PF's own driver, not pciback"):
        sc.loads(SCEN.replace("    driver: igb\n", "    driver: pciback\n").replace("vf_driver: igbvf", "numvfs: 1"))
    two = SCEN + """  - bdf: "03:00.1"
    vendor: 0x8086
    device: 0x10c9
    sriov: {totalvfs: 2, vf_device: 0x10ca, offset: 0x7f, stride: 2}
"""
    with pytest.raises(ScenarioError, match=r"devices\[0000:03:00.1\]\.sriov: VF 0 at 0000:03:10.0 collides "
                                            r"with a VF of 0000:03:00.0"):
        sc.loads(two)
    assert len(sc.loads(two.replace("offset: 0x7f", "offset: 0x7e")).devices) == 3   # 03:0f.7, 03:10.1


# ---------------------------------------------------------------- model

def test_enable_and_disable_vfs():
    m = model()
    assert m.vfs_of(PF) == []
    event = m.set_numvfs(PF, b"3\n")
    vfs = ["0000:03:10.0", "0000:03:10.2", "0000:03:10.4"]
    assert (event.kind, event.bdf, event.added, event.removed) == ("sriov_numvfs", PF, tuple(vfs), ())
    assert m.vfs_of(PF) == vfs
    vf = m.devices[vfs[1]]
    assert (vf.vendor, vf.device, vf.klass, vf.revision, vf.physfn, vf.pcie, vf.reset_methods) == (
        0x8086, 0x10CA, 0x020000, 1, PF, True, ["flr"])
    assert vf.sriov is None and vf.dir_parts == ("pci0000:03", vfs[1])
    # each VF its own new group: the lowest ids free
    assert [m.devices[b].iommu_group for b in vfs] == [1, 2, 3]
    assert m.show_device(m.devices[PF], "sriov_numvfs") == b"3\n"
    event = m.set_numvfs(PF, b"0")
    assert event.removed == tuple(vfs) and event.added == ()
    assert sorted(m.devices) == ["0000:00:10.0", PF] and all(m.devices.get(b) is None for b in vfs)
    assert vf.removed
    # enabled again: new devices, the freed groups reused
    m.set_numvfs(PF, b"0x1")
    assert m.devices[vfs[0]] is not vf and m.devices[vfs[0]].iommu_group == 1


@pytest.mark.parametrize("value, err", [
    ("abc", errno.EINVAL), ("", errno.EINVAL), ("-1", errno.EINVAL), (" 2", errno.EINVAL), ("2 3", errno.EINVAL),
    ("8", errno.ERANGE), ("65536", errno.ERANGE), ("+7", 0), ("07\n", 0), ("0x7", 0),
])
def test_numvfs_parse_and_range(value, err):
    assert numvfs(model(), value) == err


def test_numvfs_refusals_in_the_kernels_order():
    m = model()
    assert numvfs(m, "0") == 0 and m.vfs_of(PF) == []              # already 0: success
    m.set_numvfs(PF, b"2")
    assert numvfs(m, "2") == 0 and len(m.vfs_of(PF)) == 2          # the same: nothing changes
    assert numvfs(m, "3") == errno.EBUSY and len(m.vfs_of(PF)) == 2  # disable before enabling 3
    assert numvfs(m, "8") == errno.ERANGE
    # no PF driver: ENOENT, even for 0 VFs unless that is the current count
    m = model()
    m.unbind("igb", PF.encode())
    assert numvfs(m, "0") == 0
    assert numvfs(m, "1") == errno.ENOENT
    # pciback has no sriov_configure
    m.new_slot(PF.encode())
    m.bind(PCIBACK, PF.encode())
    assert numvfs(m, "1") == errno.ENOENT
    # a PF driver without sriov_configure
    assert numvfs(model(configurable=False), "1") == errno.ENOENT
    assert numvfs(model(configurable=False), "8") == errno.ERANGE     # the range is checked first


def test_pf_driver_unbind_disables_its_vfs():
    m = model(numvfs=2)
    assert len(m.vfs_of(PF)) == 2
    event = m.unbind("igb", PF.encode())
    assert event.removed == ("0000:03:10.0", "0000:03:10.2")
    assert m.vfs_of(PF) == [] and "0000:03:10.0" not in m.devices


def test_autoprobe_vf_driver_pciback_slot_and_off():
    m = model()
    m.new_slot(b"0000:03:10.2")
    m.set_numvfs(PF, b"3")
    assert [m.driver_of(b) for b in m.vfs_of(PF)] == ["igbvf", PCIBACK, "igbvf"]
    assert m.devices["0000:03:10.0"].enable_cnt == 1
    assert m.show_pciback("slots") == b"0000:03:10.2\n"
    # a VF bound to pciback is assigned: the PF driver keeps every VF
    with pytest.raises(SysfsWriteError) as exc:
        m.set_numvfs(PF, b"0")
    assert exc.value.errno == errno.EPERM and len(m.vfs_of(PF)) == 3
    # no VF driver: only the pciback slot gets one
    m = model(vf_driver=None)
    m.new_slot(b"0000:03:10.2")
    m.set_numvfs(PF, b"2")
    assert [m.driver_of(b) for b in m.vfs_of(PF)] == [None, PCIBACK]
    # autoprobe off: no driver at all, and a bind needs driver_override
    # (real Xen 4.17 + Linux 6.1: pciback/bind answers ENODEV)
    m = model(drivers_autoprobe=False)
    m.new_slot(b"0000:03:10.2")
    m.set_numvfs(PF, b"2")
    assert [m.driver_of(b) for b in m.vfs_of(PF)] == [None, None]
    with pytest.raises(SysfsWriteError) as exc:
        m.bind(PCIBACK, b"0000:03:10.2")
    assert exc.value.errno == errno.ENODEV
    m.set_driver_override("0000:03:10.0", b"igbvf")
    m.set_driver_override("0000:03:10.2", b"pciback")
    m.bind("igbvf", b"0000:03:10.0")
    m.bind(PCIBACK, b"0000:03:10.2")
    assert [m.driver_of(b) for b in m.vfs_of(PF)] == ["igbvf", PCIBACK]
    # the file toggles it
    m = model()
    assert m.show_device(m.devices[PF], "sriov_drivers_autoprobe") == b"1\n"
    m.set_autoprobe(PF, b"0\n")
    assert m.show_device(m.devices[PF], "sriov_drivers_autoprobe") == b"0\n"
    m.set_numvfs(PF, b"1")
    assert m.driver_of("0000:03:10.0") is None
    with pytest.raises(SysfsWriteError) as exc:
        m.set_autoprobe(PF, b"maybe")
    assert exc.value.errno == errno.EINVAL


def test_an_assigned_vf_blocks_disabling_and_a_removed_vf_keeps_its_slot(tmp_path):
    host = make_host(tmp_path, scenario={"devices": [dict(IGB, sriov=dict(IGB["sriov"], numvfs=0)), OTHER]})
    fs = SysfsFS(host)
    vf = "0000:03:10.0"
    fs.model.new_slot(vf.encode())
    fs.model.set_numvfs(PF, b"1")
    assert fs.is_bound(vf)
    fs.set_in_use(vf, 5)
    assert fs.in_use_by(vf) == 5
    with pytest.raises(SysfsWriteError) as exc:
        fs.model.set_numvfs(PF, b"0")
    assert exc.value.errno == errno.EPERM and fs.exists(vf)
    fs.model.unbind(PCIBACK, vf.encode())      # no longer assigned: the VFs can go
    event = fs.model.set_numvfs(PF, b"0")
    assert event.removed == (vf,)
    assert not fs.exists(vf) and fs.slots() == [vf]
    # what pciback and the host ask about it afterwards: no state, no crash
    assert fs.driver_of(vf) is None and fs.in_use_by(vf) is None and fs.resets(vf) == []
    assert not fs.is_permissive(vf) and fs.vfs(PF) == []
    fs.set_in_use(vf, None)                  # pcistub_put of a device that went
    with pytest.raises(KeyError, match="no PCI device 0000:03:10.0"):
        fs.set_in_use(vf, 5)
    with pytest.raises(KeyError, match="no PCI device"):
        fs.set_permissive(vf)
    # stores on a file opened before: ENODEV
    for store in (lambda: fs.model.reset(vf, b"1"), lambda: fs.model.enable(vf, b"1"),
                  lambda: fs.model.set_reset_method(vf, b"flr")):
        with pytest.raises(SysfsWriteError) as exc:
            store()
        assert exc.value.errno == errno.ENODEV
    # enabled again: the slot seizes it once more
    fs.model.set_numvfs(PF, b"1")
    assert fs.is_bound(vf) and fs.in_use_by(vf) is None


def test_vfs_at_start_and_address_clash():
    m = PciModel([dict(IGB, sriov=dict(IGB["sriov"], numvfs=2)), OTHER])
    assert m.vfs_of(PF) == ["0000:03:10.0", "0000:03:10.2"]
    assert [m.driver_of(b) for b in m.vfs_of(PF)] == ["igbvf", "igbvf"]
    # the PF keeps its own header type bit
    assert not m.devices[PF].multifunction
    # an unvalidated scenario with a device where a VF would go
    m = PciModel([IGB, dict(OTHER, bdf="0000:03:10.2")])
    assert numvfs(m, "2") == errno.EEXIST and m.vfs_of(PF) == []
    # VFs beyond bus 0xff
    m = PciModel([dict(IGB, bdf="0000:ff:00.0", sriov=dict(IGB["sriov"], offset=0x100))])
    assert numvfs(m, "1", "0000:ff:00.0") == errno.ENOMEM


def test_config_space_has_the_sriov_capability():
    m = model()
    m.set_numvfs(PF, b"3")
    cfg = config_space(m.devices[PF])

    def word(at):
        return int.from_bytes(cfg[at:at + 2], "little")
    assert int.from_bytes(cfg[0x100:0x104], "little") == 0x0010 | 1 << 16     # no DSN: at 0x100, last
    assert (word(0x108) & 0x9, word(0x10E), word(0x110), word(0x114), word(0x116), word(0x11A)) == (
        0x9, 7, 3, 0x80, 2, 0x10CA)
    m.set_numvfs(PF, b"0")
    cfg = config_space(m.devices[PF])
    assert (word(0x108), word(0x110)) == (0, 0)
    # after a DSN: chained from it
    m = PciModel([dict(IGB, serial=0x1122334455667788)])
    cfg = config_space(m.devices[PF])
    dsn = int.from_bytes(cfg[0x100:0x104], "little")
    assert dsn & 0xFFFF == 0x0003 and dsn >> 20 == 0x110
    assert int.from_bytes(cfg[0x110:0x112], "little") == 0x0010
    # a VF keeps the ids in its header (see config_space) and has no SR-IOV capability
    m.set_numvfs(PF, b"1")
    vcfg = config_space(m.devices["0000:03:10.0"])
    assert vcfg[0:4] == bytes.fromhex("8680ca10") and vcfg[0x100:0x104] == b"\0\0\0\0"


# ------------------------------------------------------------ FUSE sysfs

@pytest.fixture
def sriov_fs(tmp_path):
    scen = {"devices": [dict(IGB, sriov=dict(IGB["sriov"], numvfs=1)), OTHER]}
    yield from mounted(make_host(tmp_path, scenario=scen))


def test_sysfs_files_and_links(sriov_fs):
    fs = sriov_fs
    pf = p(fs, "bus/pci/devices", PF)
    names = ("sriov_totalvfs", "sriov_numvfs", "sriov_offset", "sriov_stride", "sriov_vf_device",
             "sriov_drivers_autoprobe")
    assert {n: read(os.path.join(pf, n)) for n in names} == {
        "sriov_totalvfs": "7\n", "sriov_numvfs": "1\n", "sriov_offset": "128\n", "sriov_stride": "2\n",
        "sriov_vf_device": "10ca\n", "sriov_drivers_autoprobe": "1\n"}
    modes = {n: os.stat(os.path.join(pf, n)).st_mode & 0o777 for n in os.listdir(pf) if n.startswith("sriov_")}
    assert modes == {"sriov_totalvfs": 0o444, "sriov_numvfs": 0o644, "sriov_offset": 0o444,
                     "sriov_stride": 0o444, "sriov_vf_device": 0o444, "sriov_drivers_autoprobe": 0o644}
    assert os.readlink(os.path.join(pf, "virtfn0")) == "../0000:03:10.0"
    assert not os.path.exists(os.path.join(pf, "virtfn1"))
    assert write(os.path.join(pf, "sriov_numvfs"), "3") == errno.EBUSY
    assert write(os.path.join(pf, "sriov_numvfs"), "x") == errno.EINVAL
    assert write(os.path.join(pf, "sriov_numvfs"), "9") == errno.ERANGE
    assert write(os.path.join(pf, "sriov_numvfs"), "0") == 0
    assert write(os.path.join(pf, "sriov_numvfs"), "3\n") == 0
    names = sorted(os.listdir(pf))
    assert [n for n in names if n.startswith("virtfn")] == ["virtfn0", "virtfn1", "virtfn2"]
    assert "physfn" not in names
    vf = p(fs, "bus/pci/devices", "0000:03:10.4")
    assert os.path.realpath(os.path.join(pf, "virtfn2")) == os.path.realpath(vf)
    assert os.readlink(os.path.join(vf, "physfn")) == "../" + PF
    assert os.path.realpath(os.path.join(vf, "physfn")) == os.path.realpath(pf)
    assert (read(os.path.join(vf, "vendor")), read(os.path.join(vf, "device")),
            read(os.path.join(vf, "class"))) == ("0x8086\n", "0x10ca\n", "0x020000\n")
    assert read(os.path.join(vf, "reset_method")) == "flr\n" and os.path.exists(os.path.join(vf, "reset"))
    assert not any(n.startswith(("sriov_", "virtfn")) for n in os.listdir(vf))
    assert os.path.basename(os.readlink(os.path.join(vf, "driver"))) == "igbvf"
    group = os.path.basename(os.readlink(os.path.join(vf, "iommu_group")))
    assert os.listdir(p(fs, "kernel/iommu_groups", group, "devices")) == ["0000:03:10.4"]
    assert "0000:03:10.4" in os.listdir(p(fs, "bus/pci/drivers/igbvf"))
    assert "0000:03:10.4" in os.listdir(p(fs, "bus/pci/devices"))
    assert "0000:03:10.4" in os.listdir(p(fs, "devices/pci0000:03"))
    # a file open across the VF's removal: ENODEV, as kernfs says
    fd = os.open(os.path.join(vf, "vendor"), os.O_RDONLY)
    try:
        assert write(os.path.join(pf, "sriov_numvfs"), "0") == 0
        with pytest.raises(OSError) as exc:
            os.pread(fd, 64, 0)
        assert exc.value.errno == errno.ENODEV
    finally:
        os.close(fd)
    assert not os.path.exists(vf)
    assert not any(n.startswith("virtfn") for n in os.listdir(pf))
    assert "0000:03:10.4" not in os.listdir(p(fs, "bus/pci/drivers/igbvf"))
    assert group not in os.listdir(p(fs, "kernel/iommu_groups"))
    assert read(os.path.join(pf, "sriov_numvfs")) == "0\n"


def test_sysfs_autoprobe_file_and_pciback_slot(sriov_fs):
    fs = sriov_fs
    pf = p(fs, "bus/pci/devices", PF)
    assert write(os.path.join(pf, "sriov_numvfs"), "0") == 0
    assert write(p(fs, "bus/pci/drivers/pciback/new_slot"), "0000:03:10.2") == 0
    assert write(os.path.join(pf, "sriov_numvfs"), "2") == 0
    assert os.path.basename(os.readlink(p(fs, "bus/pci/devices/0000:03:10.2/driver"))) == "pciback"
    assert write(os.path.join(pf, "sriov_numvfs"), "0") == errno.EPERM     # assigned to pciback
    assert write(p(fs, "bus/pci/drivers/pciback/unbind"), "0000:03:10.2") == 0
    assert write(os.path.join(pf, "sriov_numvfs"), "0") == 0
    assert write(os.path.join(pf, "sriov_drivers_autoprobe"), "0") == 0
    assert read(os.path.join(pf, "sriov_drivers_autoprobe")) == "0\n"
    assert write(os.path.join(pf, "sriov_drivers_autoprobe"), "what") == errno.EINVAL
    assert write(os.path.join(pf, "sriov_numvfs"), "2") == 0
    assert not os.path.exists(p(fs, "bus/pci/devices/0000:03:10.2/driver"))
    assert read(p(fs, "bus/pci/drivers/pciback/slots")) == "0000:03:10.2\n"
    # no sriov files on a device without the capability
    assert not any(n.startswith("sriov_") for n in os.listdir(p(fs, "bus/pci/devices/0000:00:10.0")))


# ------------------------------------------------------------ the host

def _until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_host_tells_the_hypervisor(sockdir):
    """The shipped sriov scenario: VFs at start known to Xen; a write to the
    mounted sriov_numvfs adds and removes them there too."""
    from xensim.host import SimHost
    host = SimHost("sriov", os.path.join(sockdir, "h"), mount_sysfs=True)
    host.start()
    try:
        hv = host.hypervisor
        assert hv.owner("0000:03:10.2") == 0 and hv.owner("0000:03:10.4") is None
        root = host.paths["sysfs_root"]
        if not root:
            # no FUSE here: the same stores through the model, told as FUSE would
            fs = host.sysfs

            def store(bdf, value):
                fs._notify(fs.model.set_numvfs(bdf, value.encode()), "/bus/pci/devices/%s/sriov_numvfs" % bdf)
                return 0
        else:
            def store(bdf, value):
                return write(os.path.join(root, "bus/pci/devices", bdf, "sriov_numvfs"), value)
        assert store(PF, "0") == 0
        assert _until(lambda: hv.owner("0000:03:10.0") is None) and hv.owner(PF) == 0
        assert store(PF, "3") == 0
        assert _until(lambda: hv.owner("0000:03:10.4") == 0)
        if root:
            assert write(os.path.join(root, "bus/pci/devices/0000:03:00.1/sriov_numvfs"), "1") == errno.ENOENT
            assert read(os.path.join(root, "bus/pci/devices/0000:03:10.4/physfn/sriov_numvfs")) == "3\n"
    finally:
        host.stop()


def test_pciback_drops_a_removed_vf_from_its_guests_bus():
    from xensim.kernel.pciback import Pciback, PcibackDevice
    pb = Pciback(host=None, kernel=None)
    dev = PcibackDevice("backend/pci/1/0", "/local/domain/1/device/pci/0", 1)
    dev.connected = True
    dev.slots[0] = ["0000:03:10.0"]
    dev.slots[1] = ["0000:00:10.0"]
    pb.devices[dev.nodename] = dev
    pb.device_gone("0000:03:10.0")
    assert pb.vbus(1) == {(1, 0): "0000:00:10.0"}
    pb.device_gone("0000:03:10.0")          # gone already: nothing to do


def test_autoprobe_off_refuses_every_probe_unless_driver_override_names_the_driver():
    """pci_device_can_probe(): with the PF's sriov_drivers_autoprobe 0 a VF
    binds to nothing, pciback's bind included, until driver_override names a
    driver; then only that driver matches, and pciback lists the slot."""
    m = model(drivers_autoprobe=False)
    m.set_numvfs(PF, b"1")
    vf = "0000:03:10.0"
    m.new_slot(vf.encode())
    with pytest.raises(SysfsWriteError) as exc:
        m.bind(PCIBACK, vf.encode())
    assert exc.value.errno == errno.ENODEV and m.driver_of(vf) is None
    m.remove_slot(vf.encode())
    m.set_driver_override(vf, b"pciback\n")
    assert m.show_device(m.devices[vf], "driver_override") == b"pciback\n"
    with pytest.raises(SysfsWriteError) as exc:
        m.bind("igbvf", vf.encode())                 # not the overriding driver
    assert exc.value.errno == errno.ENODEV
    m.bind(PCIBACK, vf.encode())
    assert m.driver_of(vf) == PCIBACK and m.show_pciback("slots") == b"0000:03:10.0\n"
    m.unbind(PCIBACK, vf.encode())
    m.set_driver_override(vf, b"\n")
    assert m.show_device(m.devices[vf], "driver_override") == b"(null)\n"

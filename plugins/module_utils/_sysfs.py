# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI sysfs: read devices, drive xen-pciback, reset.

Everything here is relative to ``root`` (``/sys`` on a host, a FUSE mount
of xensim in tests).  Driver paths are reported in libxl's form,
``/sys/bus/pci/drivers/<name>``, whatever the root, because that is what
``/libxl/pci/<bdf>/driver_path`` must hold for ``xl pci-assignable-remove -r``.

The operations are idempotent from the observed state: each looks at sysfs
first and writes only what is missing (``new_slot`` only if the slot is not
listed yet: writing it twice creates duplicates in pciback's list).

Writes are bounded: a sysfs store can block in the kernel (``unbind`` waits
for the driver's remove(), which may wait for the device), so each write
runs in a worker thread and the caller waits at most ``timeout`` seconds.  A
write that times out leaves its thread blocked in the kernel; the error says
so.  Reads are done inline: the attributes read here (vendor, resource,
slots...) are formatted from memory by the kernel without taking the device
lock, so they do not block.
"""

from __future__ import annotations

import errno as _errno
import os
import threading

from ._bdf import Bdf
from ._errors import SpecError, SysfsError

LOGICAL_ROOT = "/sys"
PCI_DEVICES = "bus/pci/devices"
PCI_DRIVERS = "bus/pci/drivers"
PCIBACK = "pciback"
PCI_BAR_IO = 0x1
# libxl reads the first 7 lines (6 BARs and the ROM); SR-IOV lines follow.
PROC_PCI_NUM_RESOURCES = 7
DEFAULT_TIMEOUT = 10.0
PCI_CONFIG_SIZE = 256
PCIE_CONFIG_SIZE = 4096
PCI_EXT_CAP_ID_DSN = 0x0003


def dsn_from_config(cfg):
    """The 64-bit Device Serial Number in a config space dump, or None.
    Extended capabilities start at 0x100, each a 32-bit header (ID in bits
    0-15, next offset in bits 20-31, dword aligned); a zero or all-ones
    header ends the list, as does a loop (bounded by the space's size)."""
    pos, hops = PCI_CONFIG_SIZE, 0
    while PCI_CONFIG_SIZE <= pos <= len(cfg) - 12 and hops < (PCIE_CONFIG_SIZE - PCI_CONFIG_SIZE) // 8:
        header = int.from_bytes(cfg[pos:pos + 4], "little")
        if header in (0, 0xFFFFFFFF):
            return None
        if header & 0xFFFF == PCI_EXT_CAP_ID_DSN:
            return int.from_bytes(cfg[pos + 4:pos + 12], "little")
        pos = (header >> 20) & 0xFFC
        hops += 1
    return None


def _address(bdf):
    """``bdf`` (a Bdf or a string) as a Bdf; not an address: SysfsError, as
    every bad input of this module is."""
    try:
        return Bdf.parse(bdf)
    except SpecError as exc:
        raise SysfsError("not a PCI address: %r (%s)" % (bdf, exc.msg), device=str(bdf)) from exc


def normalise_bdf(bdf):
    """``00:10.0``, ``0000:00:10.0`` or a Bdf -> ``0000:00:10.0`` (sysfs's form)."""
    return str(_address(bdf))


def sbdf_of(bdf):
    """Machine SBDF for hypercalls (``Bdf.sbdf``)."""
    return _address(bdf).sbdf


def _is_address(name):
    """A directory entry that names a PCI function (pciback's directory also
    holds its control files)."""
    try:
        Bdf.parse(name)
    except SpecError:
        return False
    return True


# errno.errorcode picks one name for aliased numbers (ENOTSUP for 95);
# use the names Xen, Linux and libxl print.
_PREFERRED = {_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN", _errno.EDEADLK: "EDEADLK"}


def _errno_name(err):
    return _PREFERRED.get(err) or _errno.errorcode.get(err, str(err)) if err else None


class PciDevice(object):
    """What sysfs says about one device."""

    def __init__(self, bdf, vendor, device, klass, subsystem_vendor, subsystem_device,
                 driver, driver_path, resources, irq, reset_method, iommu_group, enabled, physfn=None, sriov=None):
        self.bdf = bdf
        self.vendor = vendor
        self.device = device
        self.klass = klass
        self.subsystem_vendor = subsystem_vendor
        self.subsystem_device = subsystem_device
        self.driver = driver
        self.driver_path = driver_path
        self.resources = resources
        self.irq = irq
        self.reset_method = reset_method
        self.iommu_group = iommu_group
        self.enabled = enabled
        self.physfn = physfn      # the PF of a virtual function, else None
        self.sriov = sriov        # a PF's SR-IOV state (Sysfs.sriov), else None

    @property
    def function(self):
        return int(self.bdf.rsplit(".", 1)[1])

    def to_dict(self):
        return {
            "bdf": self.bdf, "vendor": "0x%04x" % self.vendor, "device": "0x%04x" % self.device,
            "class": "0x%06x" % self.klass,
            "subsystem_vendor": "0x%04x" % self.subsystem_vendor if self.subsystem_vendor is not None else None,
            "subsystem_device": "0x%04x" % self.subsystem_device if self.subsystem_device is not None else None,
            "driver": self.driver, "driver_path": self.driver_path,
            "resources": [list(r) for r in self.resources], "irq": self.irq,
            "reset_method": self.reset_method, "iommu_group": self.iommu_group, "enabled": self.enabled,
            "physfn": self.physfn, "sriov": self.sriov,
        }


class Sysfs(object):
    """PCI sysfs under ``root``; every write bounded by ``timeout`` seconds."""

    def __init__(self, root=LOGICAL_ROOT, timeout=DEFAULT_TIMEOUT):
        self.root = os.path.abspath(root)
        self.timeout = float(timeout)
        self._do_flr = None       # does pciback offer do_flr (asked once)

    # -- paths -------------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def dev_path(self, bdf, *attr):
        return self.path(PCI_DEVICES, normalise_bdf(bdf), *attr)

    def pciback_path(self, *attr):
        return self.path(PCI_DRIVERS, PCIBACK, *attr)

    def logical(self, real):
        """A real path under root -> the same path under /sys."""
        rel = os.path.relpath(real, os.path.realpath(self.root))
        if rel.startswith(".."):
            return real
        return LOGICAL_ROOT if rel == "." else LOGICAL_ROOT + "/" + rel

    def real(self, logical_path):
        """``/sys/...`` -> the same path under root."""
        if logical_path == LOGICAL_ROOT or logical_path.startswith(LOGICAL_ROOT + "/"):
            return self.root + logical_path[len(LOGICAL_ROOT):]
        return logical_path

    # -- low level ---------------------------------------------------------

    def _read(self, path, bdf=None):
        try:
            with open(path, "rb") as f:
                return f.read().decode("ascii", "replace")
        except OSError as exc:
            raise self._error("read of %s failed" % path, exc.errno, bdf, path) from exc

    def _error(self, what, err, bdf, path):
        name = _errno_name(err)
        msg = "%s%s: %s" % ("%s: " % bdf if bdf else "", what,
                            "%s (%s)" % (name, os.strerror(err)) if err else "unknown error")
        return SysfsError(msg, device=bdf, file=path, errno=name)

    def write(self, path, data, bdf=None):
        """One store, bounded by the timeout; raises SysfsError."""
        if isinstance(data, str):
            data = data.encode("ascii")
        box = {}

        def run():
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    box["n"] = os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError as exc:
                box["err"] = exc.errno
            except Exception as exc:  # pylint: disable=broad-except
                box["other"] = exc

        worker = threading.Thread(target=run, name="sysfs-write", daemon=True)
        worker.start()
        worker.join(self.timeout)
        shown = data.decode("ascii", "replace").strip()
        if worker.is_alive():
            raise SysfsError(
                "%s%s: write of %r did not return within %.1f s (the kernel is blocked; the write may still happen)"
                % ("%s: " % bdf if bdf else "", path, shown, self.timeout),
                device=bdf, file=path, errno="ETIMEDOUT", waited=self.timeout)
        if "err" in box:
            raise self._error("write of %r to %s failed" % (shown, path), box["err"], bdf, path)
        if "other" in box:
            raise SysfsError("%s: write failed: %s" % (path, box["other"]), device=bdf, file=path)
        if box.get("n") != len(data):
            raise SysfsError("%s: short write (%s of %d bytes)" % (path, box.get("n"), len(data)),
                             device=bdf, file=path)

    # -- reading -----------------------------------------------------------

    def exists(self, bdf):
        return os.path.isdir(self.dev_path(bdf))

    def devices(self):
        try:
            names = os.listdir(self.path(PCI_DEVICES))
        except OSError as exc:
            raise self._error("cannot list PCI devices", exc.errno, None, self.path(PCI_DEVICES)) from exc
        return sorted(n for n in names if _is_address(n))

    def _require(self, bdf):
        bdf = normalise_bdf(bdf)
        if not self.exists(bdf):
            raise SysfsError("%s: no such PCI device (%s does not exist)" % (bdf, self.dev_path(bdf)),
                             device=bdf, file=self.dev_path(bdf), errno="ENOENT")
        return bdf

    def driver_name(self, bdf):
        link = self.dev_path(bdf, "driver")
        try:
            return os.path.basename(os.readlink(link))
        except OSError as exc:
            if exc.errno == _errno.ENOENT:
                return None
            raise self._error("readlink %s failed" % link, exc.errno, bdf, link) from exc

    def driver_path(self, bdf):
        """libxl's driver_path: the driver's canonical path, under /sys."""
        if self.driver_name(bdf) is None:
            return None
        return self.logical(os.path.realpath(self.dev_path(bdf, "driver")))

    def _hex(self, bdf, attr, optional=False):
        return self._number(bdf, attr, 16, optional)

    def _number(self, bdf, attr, base, optional=False):
        path = self.dev_path(bdf, attr)
        if optional and not os.path.exists(path):
            return None
        text = self._read(path, bdf).strip()
        try:
            return int(text, base)
        except ValueError as exc:
            raise SysfsError("%s: %s holds %r, not a number" % (bdf, path, text), device=bdf, file=path) from exc

    def resources(self, bdf):
        """(start, end, flags) for each line of ``resource``."""
        bdf = normalise_bdf(bdf)
        path = self.dev_path(bdf, "resource")
        out = []
        for line in self._read(path, bdf).splitlines():
            fields = line.split()
            if len(fields) != 3:
                continue
            try:
                out.append(tuple(int(x, 16) for x in fields))
            except ValueError as exc:
                raise SysfsError("%s: bad line %r in %s" % (bdf, line, path), device=bdf, file=path) from exc
        return out

    def irq(self, bdf):
        path = self.dev_path(bdf, "irq")
        text = self._read(path, bdf).strip()
        try:
            return int(text, 10)
        except ValueError as exc:
            raise SysfsError("%s: %s holds %r" % (bdf, path, text), device=bdf, file=path) from exc

    def reset_method(self, bdf):
        """``do_flr`` (pciback's), ``reset`` (the device's file) or None, in libxl's order."""
        if os.path.exists(self.pciback_path("do_flr")):
            return "do_flr"
        if os.path.exists(self.dev_path(bdf, "reset")):
            return "reset"
        return None

    def iommu_group(self, bdf):
        link = self.dev_path(bdf, "iommu_group")
        try:
            return int(os.path.basename(os.readlink(link)))
        except OSError:
            return None
        except ValueError:
            return None

    def device(self, bdf):
        """Everything ``info`` reports of one device, in few file operations:
        one listing of its directory says which attributes it has, then each
        is read once (the driver's path is its name under the drivers'
        directory, as the kernel links it, not resolved link by link)."""
        bdf = normalise_bdf(bdf)
        path = self.dev_path(bdf)
        try:
            present = set(os.listdir(path))
        except OSError as exc:
            if exc.errno in (_errno.ENOENT, _errno.ENOTDIR):
                raise SysfsError("%s: no such PCI device (%s does not exist)" % (bdf, path), device=bdf, file=path,
                                 errno="ENOENT") from exc
            raise self._error("cannot list %s" % path, exc.errno, bdf, path) from exc
        driver = self.driver_name(bdf) if "driver" in present else None
        enabled = None
        if "enable" in present:
            enabled = self._read(self.dev_path(bdf, "enable"), bdf).strip() not in ("", "0")
        if self._do_flr is None:
            self._do_flr = os.path.exists(self.pciback_path("do_flr"))
        return PciDevice(
            bdf=bdf, vendor=self._hex(bdf, "vendor"), device=self._hex(bdf, "device"),
            klass=self._hex(bdf, "class"),
            subsystem_vendor=self._hex(bdf, "subsystem_vendor") if "subsystem_vendor" in present else None,
            subsystem_device=self._hex(bdf, "subsystem_device") if "subsystem_device" in present else None,
            driver=driver, driver_path=LOGICAL_ROOT + "/" + PCI_DRIVERS + "/" + driver if driver else None,
            resources=self.resources(bdf), irq=self.irq(bdf),
            reset_method="do_flr" if self._do_flr else ("reset" if "reset" in present else None),
            iommu_group=self.iommu_group(bdf) if "iommu_group" in present else None, enabled=enabled,
            physfn=self.physfn(bdf) if "physfn" in present else None,
            sriov=self.sriov(bdf) if "sriov_totalvfs" in present else None)

    # -- identity (for selectors) ------------------------------------------

    def physical_path(self, bdf):
        """Where the device sits, stable across bus renumbering: the root
        bus, then slot.function per hop (``pci0000:00/1c.0/00.0`` for a
        device behind the root port 00:1c.0).  Bus numbers below the root
        are left out: firmware or a hot-plug may renumber them."""
        real = os.path.realpath(self.dev_path(bdf))
        rel = os.path.relpath(real, os.path.realpath(self.path("devices")))
        parts = rel.split(os.sep)
        if rel.startswith("..") or not parts[0].startswith("pci"):
            raise SysfsError("%s: %s does not resolve into %s" % (bdf, self.dev_path(bdf), self.path("devices")),
                             device=bdf, file=self.dev_path(bdf))
        hops = [p for p in parts[1:] if _is_address(p)]
        return "/".join([parts[0]] + ["%02x.%d" % (Bdf.parse(h).slot, Bdf.parse(h).func) for h in hops])

    def label(self, bdf):
        """The firmware's name of the device (``label``, ACPI _DSM or SMBIOS), or None."""
        path = self.dev_path(bdf, "label")
        if not os.path.exists(path):
            return None
        return self._read(path, bdf).strip() or None

    def serial_number(self, bdf):
        """The PCIe Device Serial Number (extended capability 0x0003) as
        ``xx-xx-xx-xx-xx-xx-xx-xx``, most significant byte first, or None
        when the device has none (conventional PCI: 256 bytes of config)."""
        path = self.dev_path(bdf, "config")
        try:
            with open(path, "rb") as f:
                cfg = f.read(PCIE_CONFIG_SIZE)
        except OSError as exc:
            raise self._error("read of %s failed" % path, exc.errno, bdf, path) from exc
        serial = dsn_from_config(cfg)
        if serial is None:
            return None
        return "-".join("%02x" % b for b in serial.to_bytes(8, "big"))

    def identity(self, bdf, fields):
        """The selector fields of one device (only those in ``fields``:
        reading a config space per device is not free)."""
        bdf = normalise_bdf(bdf)
        out = {}
        for name in ("vendor", "device", "subsystem_vendor", "subsystem_device"):
            if name in fields:
                out[name] = self._hex(bdf, name, optional=True)
        if "class" in fields:
            out["class"] = self._hex(bdf, "class")
        if "label" in fields:
            out["label"] = self.label(bdf)
        if "path" in fields:
            out["path"] = self.physical_path(bdf)
        if "serial" in fields:
            out["serial"] = self.serial_number(bdf)
        if "physfn" in fields:
            out["physfn"] = self.physfn(bdf)
        return out

    # -- SR-IOV --------------------------------------------------------------

    def physfn(self, bdf):
        """The physical function of a virtual function (its ``physfn``
        link), or None for any other device."""
        link = self.dev_path(bdf, "physfn")
        try:
            return normalise_bdf(os.path.basename(os.readlink(link)))
        except OSError:
            return None

    def _decimal(self, bdf, attr):
        return self._number(bdf, attr, 10)

    def sriov(self, bdf):
        """A physical function's SR-IOV state, or None when the device has no
        SR-IOV capability (no ``sriov_totalvfs``): {pf, totalvfs, numvfs,
        offset, stride, vf_device, drivers_autoprobe, vfs (the addresses of
        its ``virtfnN`` links, in N order)}."""
        bdf = normalise_bdf(bdf)
        if not os.path.exists(self.dev_path(bdf, "sriov_totalvfs")):
            return None
        links = []
        for name in os.listdir(self.dev_path(bdf)):
            if name.startswith("virtfn") and name[6:].isdigit():
                links.append((int(name[6:]), normalise_bdf(os.path.basename(os.readlink(self.dev_path(bdf, name))))))
        autoprobe = self.dev_path(bdf, "sriov_drivers_autoprobe")
        return {
            "pf": bdf, "totalvfs": self._decimal(bdf, "sriov_totalvfs"), "numvfs": self._decimal(bdf, "sriov_numvfs"),
            "offset": self._decimal(bdf, "sriov_offset"), "stride": self._decimal(bdf, "sriov_stride"),
            "vf_device": "0x%04x" % self._hex(bdf, "sriov_vf_device"),
            "drivers_autoprobe": self._read(autoprobe, bdf).strip() == "1" if os.path.exists(autoprobe) else None,
            "vfs": [vf for _n, vf in sorted(links)],
        }

    def set_numvfs(self, bdf, count):
        """Write ``sriov_numvfs`` (the PF's driver creates or removes the VFs)."""
        bdf = self._require(bdf)
        self.write(self.dev_path(bdf, "sriov_numvfs"), "%d" % count, bdf)

    def drivers(self, bdfs):
        """{bdf: driver name or None}. Most devices of a passthrough host are
        bound to pciback, and pciback's directory has a link for each: one
        listing answers for all of them, and only the others cost a link read."""
        bdfs = list(bdfs)
        bound = set()
        if len(bdfs) > 2:
            try:
                bound = set(os.listdir(self.pciback_path()))
            except OSError:
                bound = set()       # not loaded (or unreadable): read each link
        return {bdf: "pciback" if bdf in bound else self.driver_name(bdf) for bdf in bdfs}

    def pciback_loaded(self):
        return os.path.isdir(self.pciback_path())

    def _require_pciback(self, bdf=None):
        if not self.pciback_loaded():
            raise SysfsError("xen-pciback is not loaded (%s does not exist)" % self.pciback_path(),
                             device=bdf, file=self.pciback_path(), errno="ENOENT")

    def pciback_slots(self):
        """pciback's seize list, in order, duplicates included."""
        self._require_pciback()
        return [s.strip() for s in self._read(self.pciback_path("slots")).splitlines() if s.strip()]

    def pciback_devices(self):
        """Devices bound to pciback (its per-device links)."""
        self._require_pciback()
        return sorted(n for n in os.listdir(self.pciback_path()) if _is_address(n))

    def permissive_devices(self):
        self._require_pciback()
        return [s.strip() for s in self._read(self.pciback_path("permissive")).splitlines() if s.strip()]

    def is_pciback(self, bdf):
        return self.driver_name(bdf) == PCIBACK

    # -- assignability -----------------------------------------------------

    def unbind(self, bdf):
        """Unbind from the current driver; returns its driver_path, or None
        when the device had no driver (nothing to rebind later)."""
        bdf = self._require(bdf)
        if self.driver_name(bdf) is None:
            return None
        driver_path = self.driver_path(bdf)
        self.write(self.real(driver_path) + "/unbind", bdf, bdf)
        return driver_path

    def bind_pciback(self, bdf):
        """Make pciback own the device: new_slot unless listed, then bind.
        Returns the steps written (empty when it already was bound)."""
        bdf = self._require(bdf)
        self._require_pciback(bdf)
        steps = []
        current = self.driver_name(bdf)
        if current == PCIBACK:
            return steps
        if current is not None:
            raise SysfsError("%s: bound to %s; unbind it first" % (bdf, current),
                             device=bdf, file=self.dev_path(bdf, "driver"), errno="EBUSY", driver=current)
        if self._probe_needs_override(bdf):
            self.write(self.dev_path(bdf, "driver_override"), PCIBACK, bdf)
            steps.append("driver_override")
        if bdf not in self.pciback_slots():
            self.write(self.pciback_path("new_slot"), bdf, bdf)
            steps.append("new_slot")
        self.write(self.pciback_path("bind"), bdf, bdf)
        steps.append("bind")
        return steps

    def _override(self, bdf):
        path = self.dev_path(bdf, "driver_override")
        if not os.path.exists(path):
            return None
        value = self._read(path, bdf).strip()
        return None if value in ("", "(null)") else value

    def _probe_needs_override(self, bdf):
        """A VF whose PF has ``sriov_drivers_autoprobe`` 0 is bound to no
        driver, pciback's ``bind`` included (ENODEV), unless its
        ``driver_override`` names the driver."""
        autoprobe = self.dev_path(bdf, "physfn", "sriov_drivers_autoprobe")
        if not os.path.exists(autoprobe) or self._read(autoprobe, bdf).strip() != "0":
            return False
        return self._override(bdf) != PCIBACK

    def unbind_pciback(self, bdf):
        """Unbind from pciback and drop its slot(s); returns the steps written."""
        bdf = self._require(bdf)
        self._require_pciback(bdf)
        steps = []
        if self.driver_name(bdf) == PCIBACK:
            self.write(self.pciback_path("unbind"), bdf, bdf)
            steps.append("unbind")
        if bdf in self.pciback_slots():
            # one write removes every duplicate of the slot
            self.write(self.pciback_path("remove_slot"), bdf, bdf)
            steps.append("remove_slot")
        if self._override(bdf) == PCIBACK:
            # ours (bind_pciback's): left, it would give the device to pciback at every probe
            self.write(self.dev_path(bdf, "driver_override"), "\n", bdf)
            steps.append("driver_override cleared")
        return steps

    def bind_driver(self, bdf, driver_path):
        """Give the device back to a dom0 driver (``driver_path`` as libxl stores it)."""
        bdf = self._require(bdf)
        current = self.driver_path(bdf)
        if current == driver_path:
            return False
        if current is not None:
            raise SysfsError("%s: bound to %s, cannot bind to %s" % (bdf, current, driver_path),
                             device=bdf, file=self.dev_path(bdf, "driver"), errno="EBUSY")
        real = self.real(driver_path)
        if not os.path.isdir(real):
            raise SysfsError("%s: driver %s is not loaded" % (bdf, driver_path),
                             device=bdf, file=real, errno="ENOENT")
        self.write(real + "/bind", bdf, bdf)
        return True

    def set_permissive(self, bdf):
        """pciback permissive mode for the device (must be bound to pciback)."""
        bdf = self._require(bdf)
        self._require_pciback(bdf)
        if bdf in self.permissive_devices():
            return False
        self.write(self.pciback_path("permissive"), bdf, bdf)
        return True

    def reset(self, bdf):
        """Reset like libxl: pciback's do_flr if present, else the device's
        reset file.  Returns the method used; raises SysfsError
        (``reset_method=None``) when the device has none."""
        bdf = self._require(bdf)
        method = self.reset_method(bdf)
        if method == "do_flr":
            self.write(self.pciback_path("do_flr"), bdf, bdf)
        elif method == "reset":
            self.write(self.dev_path(bdf, "reset"), "1", bdf)
        else:
            raise SysfsError("%s: the kernel offers no reset for this device (no %s, no %s)"
                             % (bdf, self.pciback_path("do_flr"), self.dev_path(bdf, "reset")),
                             device=bdf, reset_method=None, errno="ENOENT")
        return method


def predicted_vfs(sriov, count):
    """The addresses the first ``count`` VFs of a PF get: routing id of the
    PF + offset + i * stride (offset and stride as the PF reports them for
    the current NumVFs: the capability may change them with NumVFs, so the
    prediction is checked against the links once the VFs exist)."""
    pf = Bdf.parse(sriov["pf"])
    rid = pf.bus << 8 | pf.slot << 3 | pf.func
    out = []
    for index in range(count):
        vf = rid + sriov["offset"] + index * sriov["stride"]
        out.append("%04x:%02x:%02x.%d" % (pf.domain, vf >> 8 & 0xFF, vf >> 3 & 0x1F, vf & 7))
    return out

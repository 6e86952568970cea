# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Privileged hypercalls for PCI passthrough (libxenctrl).

``XenCtrl`` is the interface the core uses; ``LibXenCtrl`` calls Xen's
libxenctrl through ctypes on a real dom0 (signatures of Xen 4.17
``tools/include/xenctrl.h``, stable since 4.13 for these calls);
``SimXenCtrl`` talks to xensim's recorder over a Unix socket, one JSON
object per line.  ``open_xenctrl(spec)`` picks one: ``None`` or
``"libxenctrl"`` (optionally ``"libxenctrl:/path/to/libxenctrl.so"``) or
``"xensim:<socket path>"``.

Every failure raises ``HypervisorError`` with the errno name (``EBUSY``,
``EOPNOTSUPP``...), the call and its arguments.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import json
import os
import socket
import time

from ._bdf import Bdf
from ._errors import HypervisorError, SpecError

DOMID_IO = 0x7FF1
DOMID_INVALID = 0x7FF4
XEN_DOMCTL_DEV_RDM_RELAXED = 1
XEN_DOMINF_DYING = 1 << 0
XEN_DOMINF_HVM_GUEST = 1 << 1
XEN_DOMINF_SHUTDOWN = 1 << 2
XEN_DOMINF_PAUSED = 1 << 3
XEN_DOMINF_BLOCKED = 1 << 4
XEN_DOMINF_RUNNING = 1 << 5

LIBXENCTRL_NAMES = ("libxenctrl.so", "libxenctrl.so.4.17", "libxenctrl.so.4.18", "libxenctrl.so.4.19",
                    "libxenctrl.so.4.20", "libxenctrl.so.4.16", "libxenctrl.so.4.15", "libxenctrl.so.4.14")
DEFAULT_TIMEOUT = 10.0
# xen_domctl_getdomaininfo is 112 bytes in 4.17; newer Xen may grow it, so
# the buffer is larger and only the stable head (domain u16, pad u16,
# flags u32) is read.
_INFO_BUF = 1024
# xc_physinfo_t: seven u32 fields, then ``capabilities`` (offset 28) in every
# layout since 4.13; later fields (arch_capabilities in newer Xen) vary, so
# the buffer is larger than any of them and only that word is read.
_PHYSINFO_BUF = 1024
_PHYSINFO_CAPS = 28
# XEN_SYSCTL_PHYSCAP_* bits and the words ``xl info`` prints for them in
# virt_caps, in its order (hvm_directio/pv_directio: directio with hvm/pv).
PHYSCAP_HVM, PHYSCAP_PV, PHYSCAP_DIRECTIO = 1 << 0, 1 << 1, 1 << 2
_VIRT_CAPS = (("pv", 1 << 1, 0), ("hvm", 1 << 0, 0), ("hvm_directio", 1 << 0, 1 << 2), ("pv_directio", 1 << 1, 1 << 2),
              ("hap", 1 << 3, 0), ("shadow", 1 << 4, 0), ("iommu_hap_pt_share", 1 << 5, 0), ("vmtrace", 1 << 6, 0),
              ("vpmu", 1 << 7, 0), ("gnttab-v1", 1 << 8, 0), ("gnttab-v2", 1 << 9, 0))


def virt_caps(capabilities):
    """physinfo's capabilities as ``xl info`` shows them: ``pv hvm hvm_directio ...``."""
    return " ".join(word for word, bit, also in _VIRT_CAPS if capabilities & bit and (not also or capabilities & also))


def format_sbdf(sbdf):
    """``0000:03:00.0`` for a machine SBDF (``Bdf.from_sbdf``; SpecError if not one)."""
    return str(Bdf.from_sbdf(sbdf))


# errno.errorcode picks one name for aliased numbers (ENOTSUP for 95);
# use the names Xen, Linux and libxl print.
_PREFERRED = {_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN", _errno.EDEADLK: "EDEADLK"}


def _errno_name(err):
    return _PREFERRED.get(err) or _errno.errorcode.get(err, "E%d" % err) if err else "EUNKNOWN"


def _describe(op, args):
    shown = []
    for key, val in args.items():
        if key == "sbdf":
            try:
                val = format_sbdf(val)
            except SpecError:
                pass       # an error message must not fail on the value it reports
        shown.append("%s=%s" % (key, val))
    return "%s(%s)" % (op, ", ".join(shown))


def _fail(op, args, name, text=None):
    if text is None:
        num = getattr(_errno, name, None)
        text = os.strerror(num) if num else name
    return HypervisorError("%s failed: %s (%s)" % (_describe(op, args), name, text),
                           errno_name=name, op=op, args=dict(args))


def _info_dict(domid, flags):
    return {
        "domid": domid, "flags": flags,
        "hvm": bool(flags & XEN_DOMINF_HVM_GUEST), "paused": bool(flags & XEN_DOMINF_PAUSED),
        "dying": bool(flags & XEN_DOMINF_DYING), "shutdown": bool(flags & XEN_DOMINF_SHUTDOWN),
    }


class XenCtrl(object):
    """The privileged calls the core needs.  Permission calls take ``allow``."""

    def iomem_permission(self, domid, first_mfn, nr_mfns, allow):
        raise NotImplementedError

    def ioport_permission(self, domid, first_port, nr_ports, allow):
        raise NotImplementedError

    def irq_permission(self, domid, pirq, allow):
        raise NotImplementedError

    def physdev_map_pirq(self, domid, index, pirq=-1):
        """Map GSI ``index``; returns the pirq."""
        raise NotImplementedError

    def physdev_unmap_pirq(self, domid, pirq):
        raise NotImplementedError

    def assign_device(self, domid, sbdf, flags=0):
        raise NotImplementedError

    def deassign_device(self, domid, sbdf):
        raise NotImplementedError

    def test_assign_device(self, domid, sbdf):
        raise NotImplementedError

    def domain_getinfo(self, domid):
        """{'domid', 'flags', 'hvm', 'paused', 'dying', 'shutdown'}; ESRCH if absent."""
        raise NotImplementedError

    def physinfo(self):
        """{'capabilities': XEN_SYSCTL_PHYSCAP_* bits, 'virt_caps': as xl info prints them}."""
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LibXenCtrl(XenCtrl):
    """libxenctrl through ctypes.  Hypercalls return promptly (they do not
    wait on guests), so they run inline."""

    def __init__(self, library=None):
        self.lib = self._load(library)
        self._declare()
        ctypes.set_errno(0)
        self.xch = self.lib.xc_interface_open(None, None, 0)
        if not self.xch:
            err = ctypes.get_errno()
            raise _fail("xc_interface_open", {}, _errno_name(err))

    @staticmethod
    def _load(library):
        names = [library] if library else list(LIBXENCTRL_NAMES)
        if not library:
            found = ctypes.util.find_library("xenctrl")
            if found:
                names.insert(0, found)
        errors = []
        for name in names:
            try:
                return ctypes.CDLL(name, use_errno=True)
            except OSError as exc:
                errors.append(str(exc))
        raise HypervisorError("cannot load libxenctrl (is this a Xen dom0 with xen-utils installed?): %s"
                              % "; ".join(errors), errno_name="ENOENT", op="load")

    def _declare(self):
        c = ctypes
        lib = self.lib
        proto = {
            "xc_interface_open": (c.c_void_p, [c.c_void_p, c.c_void_p, c.c_uint]),
            "xc_interface_close": (c.c_int, [c.c_void_p]),
            "xc_domain_iomem_permission": (c.c_int, [c.c_void_p, c.c_uint32, c.c_ulong, c.c_ulong, c.c_uint8]),
            "xc_domain_ioport_permission": (c.c_int, [c.c_void_p, c.c_uint32, c.c_uint32, c.c_uint32, c.c_uint32]),
            "xc_domain_irq_permission": (c.c_int, [c.c_void_p, c.c_uint32, c.c_uint32, c.c_bool]),
            "xc_physdev_map_pirq": (c.c_int, [c.c_void_p, c.c_uint32, c.c_int, c.POINTER(c.c_int)]),
            "xc_physdev_unmap_pirq": (c.c_int, [c.c_void_p, c.c_uint32, c.c_int]),
            "xc_assign_device": (c.c_int, [c.c_void_p, c.c_uint32, c.c_uint32, c.c_uint32]),
            "xc_deassign_device": (c.c_int, [c.c_void_p, c.c_uint32, c.c_uint32]),
            "xc_test_assign_device": (c.c_int, [c.c_void_p, c.c_uint32, c.c_uint32]),
            "xc_domain_getinfolist": (c.c_int, [c.c_void_p, c.c_uint32, c.c_uint, c.c_void_p]),
        }
        for name, (restype, argtypes) in proto.items():
            try:
                fn = getattr(lib, name)
            except AttributeError as exc:
                raise HypervisorError("libxenctrl has no %s" % name, errno_name="ENOSYS", op=name) from exc
            fn.restype = restype
            fn.argtypes = argtypes
        # Only the readiness report needs it: its absence fails that call alone.
        self._has_physinfo = hasattr(lib, "xc_physinfo")
        if self._has_physinfo:
            lib.xc_physinfo.restype = c.c_int
            lib.xc_physinfo.argtypes = [c.c_void_p, c.c_void_p]

    def _call(self, op, args, *cargs):
        if not self.xch:
            raise _fail(op, args, "EBADF", "interface closed")
        ctypes.set_errno(0)
        rc = getattr(self.lib, op)(self.xch, *cargs)
        if rc < 0:
            # libxc returns -1 with errno set; a few paths return -errno.
            err = ctypes.get_errno() or (-rc if rc < -1 else 0)
            raise _fail(op, args, _errno_name(err))
        return rc

    def iomem_permission(self, domid, first_mfn, nr_mfns, allow):
        args = {"domid": domid, "first_mfn": first_mfn, "nr_mfns": nr_mfns, "allow": bool(allow)}
        self._call("xc_domain_iomem_permission", args, domid, first_mfn, nr_mfns, 1 if allow else 0)

    def ioport_permission(self, domid, first_port, nr_ports, allow):
        args = {"domid": domid, "first_port": first_port, "nr_ports": nr_ports, "allow": bool(allow)}
        self._call("xc_domain_ioport_permission", args, domid, first_port, nr_ports, 1 if allow else 0)

    def irq_permission(self, domid, pirq, allow):
        args = {"domid": domid, "pirq": pirq, "allow": bool(allow)}
        self._call("xc_domain_irq_permission", args, domid, pirq, bool(allow))

    def physdev_map_pirq(self, domid, index, pirq=-1):
        out = ctypes.c_int(pirq)
        self._call("xc_physdev_map_pirq", {"domid": domid, "index": index, "pirq": pirq},
                   domid, index, ctypes.byref(out))
        return out.value

    def physdev_unmap_pirq(self, domid, pirq):
        self._call("xc_physdev_unmap_pirq", {"domid": domid, "pirq": pirq}, domid, pirq)

    def assign_device(self, domid, sbdf, flags=0):
        self._call("xc_assign_device", {"domid": domid, "sbdf": sbdf, "flags": flags}, domid, sbdf, flags)

    def deassign_device(self, domid, sbdf):
        self._call("xc_deassign_device", {"domid": domid, "sbdf": sbdf}, domid, sbdf)

    def test_assign_device(self, domid, sbdf):
        self._call("xc_test_assign_device", {"domid": domid, "sbdf": sbdf}, domid, sbdf)

    def domain_getinfo(self, domid):
        buf = ctypes.create_string_buffer(_INFO_BUF)
        args = {"domid": domid}
        n = self._call("xc_domain_getinfolist", args, domid, 1, buf)
        got = int.from_bytes(buf.raw[0:2], "little")
        if n < 1 or got != domid:
            # getinfolist returns the next existing domain, not an error
            raise _fail("xc_domain_getinfolist", args, "ESRCH")
        return _info_dict(domid, int.from_bytes(buf.raw[4:8], "little"))

    def physinfo(self):
        if not self._has_physinfo:
            raise _fail("xc_physinfo", {}, "ENOSYS", "libxenctrl has no xc_physinfo")
        buf = ctypes.create_string_buffer(_PHYSINFO_BUF)
        self._call("xc_physinfo", {}, buf)
        caps = int.from_bytes(buf.raw[_PHYSINFO_CAPS:_PHYSINFO_CAPS + 4], "little")
        return {"capabilities": caps, "virt_caps": virt_caps(caps)}

    def close(self):
        if self.xch:
            self.lib.xc_interface_close(self.xch)
            self.xch = None


class SimXenCtrl(XenCtrl):
    """xensim's hypervisor endpoint: JSON lines on a Unix socket."""

    def __init__(self, socket_path, timeout=DEFAULT_TIMEOUT):
        self.socket_path = socket_path
        self.timeout = float(timeout)
        self.sock = None
        self._buf = b""
        self._next_id = 1

    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise HypervisorError("cannot reach the simulated hypervisor at %s: %s" % (self.socket_path, exc),
                                  errno_name=_errno_name(exc.errno), op="connect") from exc
        self.sock = sock

    def _request(self, op, args):
        if self.sock is None:
            self._connect()
        rid = self._next_id
        self._next_id += 1
        msg = dict(args, op=op, id=rid)
        deadline = time.monotonic() + self.timeout
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout()
                self.sock.settimeout(left)
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed")
                self._buf += chunk
        except (OSError, ConnectionError) as exc:
            self.close()
            name = "ETIMEDOUT" if isinstance(exc, socket.timeout) else _errno_name(getattr(exc, "errno", None))
            raise HypervisorError("%s: no reply from %s: %s" % (_describe(op, args), self.socket_path, str(exc) or name),
                                  errno_name=name, op=op, args=dict(args)) from exc
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        if reply.get("id") != rid:
            self.close()
            raise HypervisorError("%s: reply out of order" % _describe(op, args), errno_name="EPROTO", op=op)
        if not reply.get("ok"):
            raise _fail(op, args, reply.get("errno", "EIO"), reply.get("error"))
        return reply

    def iomem_permission(self, domid, first_mfn, nr_mfns, allow):
        self._request("iomem_permission", {"domid": domid, "first_mfn": first_mfn, "nr_mfns": nr_mfns,
                                           "allow": bool(allow)})

    def ioport_permission(self, domid, first_port, nr_ports, allow):
        self._request("ioport_permission", {"domid": domid, "first_port": first_port, "nr_ports": nr_ports,
                                            "allow": bool(allow)})

    def irq_permission(self, domid, pirq, allow):
        self._request("irq_permission", {"domid": domid, "pirq": pirq, "allow": bool(allow)})

    def physdev_map_pirq(self, domid, index, pirq=-1):
        return self._request("physdev_map_pirq", {"domid": domid, "index": index, "pirq": pirq})["pirq"]

    def physdev_unmap_pirq(self, domid, pirq):
        self._request("physdev_unmap_pirq", {"domid": domid, "pirq": pirq})

    def assign_device(self, domid, sbdf, flags=0):
        self._request("assign_device", {"domid": domid, "sbdf": sbdf, "flags": flags})

    def deassign_device(self, domid, sbdf):
        self._request("deassign_device", {"domid": domid, "sbdf": sbdf})

    def test_assign_device(self, domid, sbdf):
        self._request("test_assign_device", {"domid": domid, "sbdf": sbdf})

    def domain_getinfo(self, domid):
        info = self._request("domain_getinfo", {"domid": domid})["info"]
        return _info_dict(info["domid"], info["flags"])

    def physinfo(self):
        caps = int(self._request("physinfo", {})["physinfo"]["capabilities"])
        return {"capabilities": caps, "virt_caps": virt_caps(caps)}

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self._buf = b""


def open_xenctrl(spec=None, timeout=DEFAULT_TIMEOUT):
    """``None``/``"libxenctrl"``[``:<library>``] or ``"xensim:<socket>"``."""
    spec = spec or "libxenctrl"
    kind, dummy, arg = spec.partition(":")
    if kind == "libxenctrl":
        return LibXenCtrl(arg or None)
    if kind == "xensim":
        if not arg:
            raise HypervisorError("xensim: needs a socket path (xensim:/path/to/privcmd)", errno_name="EINVAL")
        return SimXenCtrl(arg, timeout=timeout)
    raise HypervisorError("unknown hypervisor interface %r (libxenctrl or xensim:<path>)" % spec,
                          errno_name="EINVAL")

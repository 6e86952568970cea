# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read what a host's PCI passthrough looks like now, in three round trips.

1. list the domains, the PCI backends and libxl's PCI bookkeeping;
2. per domain its name, type, stubdom links, and each backend's key list;
3. every backend key, each frontend state and error node.

Directories are listed rather than keys probed, and every round trip is one
pipelined batch, so the cost does not grow with round trips per device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf, PciFunction, parse_opts
from ansible_collections.xen.pci.plugins.module_utils._errors import DomainError, SpecError
from ansible_collections.xen.pci.plugins.module_utils._journal import JOURNAL_ROOT, read_journals
from ansible_collections.xen.pci.plugins.module_utils._xenstore import XenStore

BACKEND_ROOT = "/local/domain/0/backend/pci"
LIBXL_PCI = "/libxl/pci"

# XenbusState values (xen/include/public/io/xenbus.h).
INITIALISING, INITWAIT, INITIALISED, CONNECTED, CLOSING, CLOSED, RECONFIGURING, RECONFIGURED = 1, 2, 3, 4, 5, 6, 7, 8
STATE_NAMES = {0: "Unknown", 1: "Initialising", 2: "InitWait", 3: "Initialised", 4: "Connected",
               5: "Closing", 6: "Closed", 7: "Reconfiguring", 8: "Reconfigured"}

PER_INDEX_KEYS = ("state", "key", "dev", "vdev", "opts", "vdevfn", "name")
_INDEXED = re.compile(r"^(state|key|dev|vdev|opts|vdevfn|name|root)-([0-9]+)$")
# Domain ids are ASCII digits only: str.isdigit() also takes "\u0661" and "\u00b9".
_DOMID = re.compile(r"[0-9]+\Z")


DOMID_IO = 0x7FF1   # the quarantine domain of assignable devices


def libxl_pci_path(bdf, leaf=None):
    """libxl's bookkeeping node of a device: /libxl/pci/<DDDD-BB-SS-F>[/leaf]."""
    key = Bdf.parse(bdf).xs_key
    return "%s/%s/%s" % (LIBXL_PCI, key, leaf) if leaf else "%s/%s" % (LIBXL_PCI, key)


def backend_path(domid):
    return "%s/%d/0" % (BACKEND_ROOT, domid)


def frontend_path(domid):
    return "/local/domain/%d/device/pci/0" % domid


def error_path(domid):
    return "/local/domain/0/error/backend/pci/%d/0/error" % domid


def state_name(value):
    if value is None:
        return "absent"
    return "%d (%s)" % (value, STATE_NAMES.get(value, "?"))


_DEC = re.compile(r"-?[0-9]+\Z")
_HEXNUM = re.compile(r"[0-9a-fA-F]+\Z")


def xs_int(value, base=10):
    """A number read from xenstore, or None if absent or not a plain ASCII
    number (int() would also take other scripts' digits and blanks)."""
    if value is None or not (_DEC if base == 10 else _HEXNUM).match(value):
        return None
    return int(value, base)


_int = xs_int


@dataclass
class BackendDevice:
    """One ``dev-N`` entry of a PCI backend, as it is in xenstore."""

    index: int
    bdf: str
    opts: Dict[str, object] = field(default_factory=dict)
    opts_raw: Optional[str] = None
    key: Optional[str] = None
    vdevfn: Optional[int] = None
    name: Optional[str] = None
    state: Optional[int] = None
    vdev: Optional[str] = None

    def function(self):
        """This entry as a PciFunction (options resolved as libxl reads them)."""
        return PciFunction.from_backend(self.bdf, self.opts_raw, "%x" % self.vdevfn if self.vdevfn else None, self.name)

    @property
    def permissive(self):
        return bool(self.opts.get("permissive"))

    def as_dict(self):
        return {"index": self.index, "bdf": self.bdf, "state": self.state, "vdev": self.vdev,
                "vdevfn": self.vdevfn, "name": self.name, "opts": dict(self.opts)}


@dataclass
class Backend:
    """The PCI backend of one domain (``/local/domain/0/backend/pci/<domid>/0``)."""

    domid: int
    keys: Dict[str, str]
    fe_state: Optional[int] = None
    error: Optional[str] = None

    @property
    def path(self):
        return backend_path(self.domid)

    @property
    def state(self):
        return _int(self.keys.get("state"))

    @property
    def num_devs(self):
        return _int(self.keys.get("num_devs"))

    @property
    def devices(self):
        out = []
        for i in range(self.num_devs or 0):
            dev = self.keys.get("dev-%d" % i)
            if dev is None:
                continue
            raw = self.keys.get("opts-%d" % i)
            try:
                opts = parse_opts(raw) if raw is not None else {}
            except SpecError:
                opts = {}   # written by some other toolstack: keep it raw
            out.append(BackendDevice(
                index=i, bdf=dev, opts=opts, opts_raw=raw, key=self.keys.get("key-%d" % i),
                vdevfn=_int(self.keys.get("vdevfn-%d" % i), 16), name=self.keys.get("name-%d" % i),
                state=_int(self.keys.get("state-%d" % i)), vdev=self.keys.get("vdev-%d" % i)))
        return out

    def device(self, bdf):
        for dev in self.devices:
            if dev.bdf == bdf:
                return dev
        return None

    @property
    def connected(self):
        return self.state == CONNECTED and self.fe_state == CONNECTED

    def as_dict(self):
        return {"path": self.path, "state": self.state, "frontend_state": self.fe_state,
                "num_devs": self.num_devs, "error": self.error,
                "devices": [d.as_dict() for d in self.devices]}


@dataclass
class DomainState:
    """What xenstore says about one domain."""

    domid: int
    name: Optional[str] = None
    type: Optional[str] = None            # pv | hvm | pvh, from /libxl/<domid>/type
    dm_version: Optional[str] = None
    stubdom_id: Optional[int] = None      # its device model's stub domain
    target: Optional[int] = None          # set when this domain IS a stub domain
    vm: Optional[str] = None
    backend: Optional[Backend] = None
    dm_state: Optional[str] = None
    stub_backend: Optional[Backend] = None  # a HVM guest's devices live in its stubdom's backend

    @property
    def uuid(self):
        return self.vm.rsplit("/", 1)[-1] if self.vm else None

    @property
    def is_stubdom(self):
        return self.target is not None

    @property
    def devices(self):
        """The guest's PCI devices: its own backend's, or for a HVM guest
        whose QEMU runs in a stub domain, the stub domain's."""
        if self.stub_backend is not None:
            return self.stub_backend.devices
        return self.backend.devices if self.backend else []

    def device(self, bdf):
        for dev in self.devices:
            if dev.bdf == bdf:
                return dev
        return None

    def label(self):
        return "%s (domid %d)" % (self.name, self.domid) if self.name else "domid %d" % self.domid


@dataclass
class HostState:
    domains: Dict[int, DomainState]
    libxl_pci: Dict[str, Dict[str, str]]          # bdf -> {domid, name, driver_path}
    round_trips: int = 0
    journals: List[object] = field(default_factory=list)   # _journal.JournalRecord of unfinished requests

    def resolve(self, ref):
        """A domain by id (an int, or a string of ASCII digits) or by its
        exact name; DomainError if unknown, SpecError for anything else."""
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise SpecError("a domain is a name or a domain id, got %s %r" % (type(ref).__name__, ref), domain=repr(ref))
        if isinstance(ref, int) or _DOMID.match(ref):
            dom = self.domains.get(int(ref))
            if dom is None:
                raise DomainError("domain %s does not exist on this host" % ref, domain=ref)
            return dom
        matches = [d for d in self.domains.values() if d.name == ref]
        if not matches:
            known = ", ".join(sorted(d.name for d in self.domains.values() if d.name))
            raise DomainError("domain %r does not exist on this host (known: %s)" % (ref, known or "none"), domain=ref)
        if len(matches) > 1:
            raise DomainError("domain name %r is ambiguous: domids %s" % (ref, sorted(d.domid for d in matches)), domain=ref)
        return matches[0]

    def holder_of(self, bdf):
        """Domid whose backend lists ``bdf`` (then libxl's bookkeeping), or None.
        A stub domain's device is its HVM guest's."""
        # One index of every backend's devices, built on first use: a host
        # is read once and asked about each of its devices (info: O(devices)
        # questions, each a scan of every backend without it).
        holders = self.__dict__.get("_holders")
        if holders is None:
            holders = {}
            for dom in self.domains.values():
                for dev in dom.backend.devices if dom.backend else ():
                    holders.setdefault(dev.bdf, dom.target if dom.target is not None else dom.domid)
            self.__dict__["_holders"] = holders
        if bdf in holders:
            return holders[bdf]
        rec = self.libxl_pci.get(bdf, {})
        return _int(rec.get("domid"))

    def name_of(self, bdf):
        return self.libxl_pci.get(bdf, {}).get("name")

    def bdf_for_name(self, name):
        for bdf, rec in self.libxl_pci.items():
            if rec.get("name") == name:
                return bdf
        raise SpecError("no PCI device is named %r (names are set with pci-assignable-add -n)" % name, name=name)


def xs_key_to_bdf(key):
    """``0000-03-00-0`` (the /libxl/pci component) -> ``0000:03:00.0``, None if malformed."""
    try:
        return str(Bdf.from_xs_key(key))
    except SpecError:
        return None


def read_host(xs, deadline, domids=None):
    """Read every domain (or just ``domids``) and its PCI state."""
    rt0 = xs.stats.round_trips
    listing = xs.directory_many(["/local/domain", BACKEND_ROOT, LIBXL_PCI, JOURNAL_ROOT], deadline=deadline)
    all_ids = sorted(int(d) for d in (listing["/local/domain"] or []) if _DOMID.match(d))
    wanted = all_ids if domids is None else [d for d in all_ids if d in set(domids)]
    with_backend = {int(d) for d in (listing[BACKEND_ROOT] or []) if _DOMID.match(d)}
    pci_keys = listing[LIBXL_PCI] or []

    # Round trip 2: domain facts, backend key lists, libxl bookkeeping.
    reads = []
    for domid in wanted:
        base = "/local/domain/%d" % domid
        reads += [base + "/name", "/libxl/%d/type" % domid, "/libxl/%d/dm-version" % domid,
                  base + "/image/device-model-domid", base + "/target", base + "/vm",
                  frontend_path(domid) + "/state", error_path(domid)]
    for key in pci_keys:
        reads += ["%s/%s/%s" % (LIBXL_PCI, key, leaf) for leaf in ("domid", "name", "driver_path")]
    dirs = [backend_path(d) for d in wanted if d in with_backend]
    requests = [xs.read_request(p) for p in reads] + [xs.directory_request(p) for p in dirs]
    replies = _checked(xs.pipeline(requests, deadline=deadline), requests)
    values = dict(zip(reads, replies[:len(reads)]))
    be_lists = dict(zip(dirs, replies[len(reads):]))

    # Round trip 3: every backend key (and device-model states once types are known).
    reads3 = []
    for path, names in be_lists.items():
        reads3 += ["%s/%s" % (path, n) for n in (names or [])]
    dm_paths = {}
    for domid in wanted:
        stub = _int(values["/local/domain/%d/image/device-model-domid" % domid])
        if values["/libxl/%d/type" % domid] == "hvm":
            owner = stub if stub is not None else 0
            dm_paths[domid] = "/local/domain/%d/device-model/%d/state" % (owner, domid)
    reads3 += list(dm_paths.values())
    values3 = xs.read_many(reads3, deadline=deadline) if reads3 else {}

    domains = {}
    for domid in wanted:
        base = "/local/domain/%d" % domid
        backend = None
        if backend_path(domid) in be_lists and be_lists[backend_path(domid)] is not None:
            prefix = backend_path(domid) + "/"
            keys = {p[len(prefix):]: v for p, v in values3.items() if p.startswith(prefix) and v is not None}
            backend = Backend(domid=domid, keys=keys, fe_state=_int(values[frontend_path(domid) + "/state"]),
                              error=values[error_path(domid)])
        domains[domid] = DomainState(
            domid=domid, name=values[base + "/name"], type=values["/libxl/%d/type" % domid],
            dm_version=values["/libxl/%d/dm-version" % domid],
            stubdom_id=_int(values[base + "/image/device-model-domid"]), target=_int(values[base + "/target"]),
            vm=values[base + "/vm"], backend=backend, dm_state=values3.get(dm_paths.get(domid, ""), None))
    for dom in domains.values():
        stub = domains.get(dom.stubdom_id) if dom.stubdom_id is not None else None
        if stub is not None and stub.target == dom.domid:
            dom.stub_backend = stub.backend
    libxl_pci = {}
    for key in pci_keys:
        bdf = xs_key_to_bdf(key)
        if bdf is None:
            continue
        rec = {}
        for leaf in ("domid", "name", "driver_path"):
            value = values["%s/%s/%s" % (LIBXL_PCI, key, leaf)]
            if value is not None:
                rec[leaf] = value
        libxl_pci[bdf] = rec
    journals = read_journals(xs, listing[JOURNAL_ROOT] or [], deadline)
    return HostState(domains=domains, libxl_pci=libxl_pci, round_trips=xs.stats.round_trips - rt0, journals=journals)


def untrusted_warnings(xs):
    """What the xenstore client could not decode (a guest's own nodes may hold anything)."""
    return xs.undecodable_warnings()


def read_backend(xs, domid, deadline, tx=0):
    """One domain's backend (None if absent), in two round trips."""
    path = backend_path(domid)
    names = xs.directory(path, tx=tx, deadline=deadline)
    if names is None:
        return None
    paths = ["%s/%s" % (path, n) for n in names] + [frontend_path(domid) + "/state", error_path(domid)]
    values = xs.read_many(paths, tx=tx, deadline=deadline)
    keys = {n: values["%s/%s" % (path, n)] for n in names if values["%s/%s" % (path, n)] is not None}
    return Backend(domid=domid, keys=keys, fe_state=_int(values[frontend_path(domid) + "/state"]),
                   error=values[error_path(domid)])


def _checked(replies, requests):
    out = []
    for (op, _path, _payload), reply in zip(requests, replies):
        if isinstance(reply, Exception):
            if getattr(reply, "errno", None) == "ENOENT":
                out.append(None)
                continue
            raise reply
        out.append(XenStore.decode_reply(op, reply))
    return out

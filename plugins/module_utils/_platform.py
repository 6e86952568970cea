# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control planes of one host that a request may touch, and its locks.

Locks, in the order they are taken (never the other way round, so two
requests cannot deadlock):

1. the per-domain lock libxl takes for a domain's changes
   (``userdata-l.<domid>.<uuid>.domain-userdata-lock``), one per domain of
   the request, in domid order: our requests and ``xl`` take turns, and
   a request reads, plans and changes a domain while nobody else does;
2. the host's pool lock (ours: libxl has none): held briefly around every
   change of a device's ownership (its ``/libxl/pci/<bdf>/domid`` claim,
   its pciback binding), so that making a device assignable or giving it
   back never interleaves with a guest claiming it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field

from ansible_collections.xen.pci.plugins.module_utils._errors import XenPciError
from ansible_collections.xen.pci.plugins.module_utils._sysfs import Sysfs
from ansible_collections.xen.pci.plugins.module_utils._xenstore import XenStore

POOL_LOCK = "xen.pci-pool.lock"


@dataclass
class Platform:
    """xenstore, sysfs, the hypervisor and the paths of one host.

    The hypervisor (libxenctrl through ctypes, or the simulator's socket) is
    opened on first use: a task that changes nothing never loads it."""

    xs: object                       # _xenstore.XenStore
    sysfs: object = None             # _sysfs.Sysfs, None: no sysfs checks or changes
    hypervisor: str = "none"         # libxenctrl[:<path>] | xensim:<socket> | none
    userdata_dir: str = "/var/lib/xen"
    locking: bool = True
    qmp_dir: str = "/var/run/xen"
    _xenctrl: object = field(default=None, repr=False)
    # QEMU ids whose forced unplug timed out in this task (the recovery of a
    # journal, then the request itself): waited for and reported once.
    unplug_timed_out: set = field(default_factory=set, repr=False)
    _grants: object = field(default=None, repr=False)
    _pool: object = field(default=None, repr=False)
    _pool_depth: int = field(default=0, repr=False)

    @property
    def xenctrl(self):
        """The privileged-call interface (_xenctrl), or None without a hypervisor."""
        if self._xenctrl is None and self.hypervisor and self.hypervisor != "none":
            from ansible_collections.xen.pci.plugins.module_utils._xenctrl import open_xenctrl  # pylint: disable=import-outside-toplevel
            self._xenctrl = open_xenctrl(self.hypervisor)
        return self._xenctrl

    @property
    def grants(self):
        """Grant and revoke of a device's privileged access (_grants), or None."""
        if self._grants is None and self.xenctrl is not None:
            from ansible_collections.xen.pci.plugins.module_utils._grants import Grants  # pylint: disable=import-outside-toplevel
            self._grants = Grants(self.xenctrl, self.sysfs)
        return self._grants

    def domain_paused(self, domid):
        """True for a paused domain (or one being built); False otherwise or if unknown."""
        if self.xenctrl is None:
            return False
        try:
            info = self.xenctrl.domain_getinfo(domid)
        except XenPciError:
            return False
        return bool(info.get("paused", False))

    def domain_lock(self, dom, deadline):
        """libxl's per-domain lock of ``dom`` (a DomainState), held until released."""
        if not self.locking:
            return None
        # Imported here: a request that changes nothing takes no lock.
        from ansible_collections.xen.pci.plugins.module_utils._lock import FileLock, domain_lock_path  # pylint: disable=import-outside-toplevel
        lock = FileLock(domain_lock_path(self.userdata_dir, dom.domid, dom.uuid))
        return lock.acquire(deadline, "another toolstack request on %s" % dom.label())

    @contextlib.contextmanager
    def pool_lock(self, deadline):
        """The host's pool lock, for the duration of a ``with`` block.
        Re-entrant within this process (the assignable runner holds it for
        its whole request, its steps take it again)."""
        if not self.locking:
            yield None
            return
        if self._pool is None:
            from ansible_collections.xen.pci.plugins.module_utils._lock import FileLock  # pylint: disable=import-outside-toplevel
            self._pool = FileLock(os.path.join(self.userdata_dir, POOL_LOCK))
        if self._pool_depth == 0:
            self._pool.acquire(deadline, "another xen.pci request changing the assignable pool")
        self._pool_depth += 1
        try:
            yield self._pool
        finally:
            self._pool_depth -= 1
            if self._pool_depth == 0:
                self._pool.release()

    def passthrough_mode(self, domid, uuid):
        """c_info.passthrough from libxl's saved domain config, or None if unknown."""
        if not uuid:
            return None
        path = os.path.join(self.userdata_dir, "userdata-d.%d.%s.libxl-json" % (domid, uuid))
        try:
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict) or not isinstance(config.get("c_info"), dict):
            return None
        return config["c_info"].get("passthrough")

    def close(self):
        self.xs.close()
        if self._xenctrl is not None:
            self._xenctrl.close()


def connect(xenstore_path=None, xenbus=False, sysfs_root="/sys", hypervisor="libxenctrl", userdata_dir="/var/lib/xen",
            timeout=60.0, locking=True, qmp_dir="/var/run/xen"):
    """A Platform for one host. ``hypervisor``: ``libxenctrl`` (the host's
    library), ``none`` (no privileged calls) or ``xensim:<socket>``."""
    xs = XenStore(xenstore_path, xenbus=xenbus, timeout=min(timeout, 30.0))
    sysfs = Sysfs(sysfs_root) if sysfs_root else None
    return Platform(xs=xs, sysfs=sysfs, hypervisor=hypervisor or "none", userdata_dir=userdata_dir, locking=locking,
                    qmp_dir=qmp_dir)

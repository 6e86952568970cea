# -*- coding: utf-8 -*-
# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """How the modules reach the host's xenstored, sysfs, hypervisor and QEMU."""

    DOCUMENTATION = r"""
options:
  xenstore_path:
    description:
      - Unix socket of C(xenstored).
      - When not set, the E(XENSTORED_PATH) environment variable, then C(/var/run/xenstored/socket).
    type: path
  xenbus:
    description:
      - Talk to xenstore through the xenbus device (C(/dev/xen/xenbus)) instead of the socket.
      - Use on hosts whose C(xenstored) runs in a stub domain.
    type: bool
    default: false
  sysfs_root:
    description:
      - Root of the sysfs tree that holds C(bus/pci). Only tests change it.
    type: path
    default: /sys
  hypervisor:
    description:
      - How privileged calls (I/O memory, I/O port and IRQ permissions, device assignment) are made.
      - V(libxenctrl) loads the host's C(libxenctrl) library.
      - V(none) makes no privileged call (for hosts where another agent grants them).
      - C(xensim:<socket>) talks to the simulated host of the collection's tests.
    type: str
    default: libxenctrl
  userdata_dir:
    description:
      - libxl's userdata directory (saved domain configs and the lock files shared with C(xl)).
    type: path
    default: /var/lib/xen
  qmp_dir:
    description:
      - Directory of the QMP sockets of device models (C(qmp-libxl-<domid>)).
    type: path
    default: /var/run/xen
  timeout:
    description:
      - Seconds the whole task may take, from 1 to 3600. Every wait (backend, guest, QMP) spends from this budget.
      - A quarter of it (at least 2 seconds, at most 30) is kept back from the forward work, so that a failure can
        still be undone, O(xen.pci.passthrough#module:force) can still rebuild a backend, and the host can be read back.
      - When it runs out the task fails, saying what it was waiting for and what it saw.
    type: float
    default: 60
requirements:
  - pyxs (Debian C(python3-pyxs), or C(pip install pyxs)) on the Xen host.
notes:
  - The module keeps the compiled code of the collection's module_utils in C(~/.cache/xen-pci/bytecode/) of the user
    it runs as (in check mode too), and uses it only while it matches the shipped source; set
    C(XEN_PCI_BYTECODE_CACHE=off) in the task's C(environment) to keep nothing, or an absolute path to keep it there.
"""

    ATTRIBUTES = r"""
attributes:
  action_group:
    description: Use C(group/xen.pci.pci) in C(module_defaults) to set the connection options of every module at once.
    support: full
    membership:
      - xen.pci.pci
"""

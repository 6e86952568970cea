# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exceptions of the hotplug core.

One root, ``XenPciError``; modules turn it into ``fail_json`` at the edge.
Every error carries a message meant for the operator (which device, which
domain, which step, what was seen) and a ``details`` dict with the machine
readable facts, so the module can return them unchanged.
"""

from __future__ import annotations

import copy


class XenPciError(Exception):
    """Root of every error the core raises on purpose."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def to_dict(self):
        out = {"msg": self.msg, "error": type(self).__name__}
        out.update(self.details)
        return out


class SpecError(XenPciError, ValueError):
    """Bad input: a PCI address, a device spec, an option value."""


class XenstoreError(XenPciError):
    """xenstored refused a request (``errno`` is the wire error name)."""

    def __init__(self, msg, errno_name=None, **details):
        super().__init__(msg, errno=errno_name, **details)
        self.errno = errno_name


class XenstoreConnectionError(XenPciError):
    """The connection to xenstored failed or was closed mid-request."""


class DeadlineExceeded(XenPciError):
    """A bounded operation ran out of time (``waited`` seconds)."""


class QmpError(XenPciError):
    """QEMU answered a command with an error (class and description)."""

    def __init__(self, msg, error_class=None, desc=None, **details):
        super().__init__(msg, error_class=error_class, desc=desc, **details)
        self.error_class = error_class
        self.desc = desc


class QmpConnectionError(XenPciError):
    """The QMP socket is missing, refused us, or QEMU went away."""


class SysfsError(XenPciError):
    """A sysfs read or write failed (device missing, driver refused)."""


class HypervisorError(XenPciError):
    """A privileged call (libxenctrl) failed; ``errno`` is its name."""

    def __init__(self, msg, errno_name=None, **details):
        super().__init__(msg, errno=errno_name, **details)
        self.errno = errno_name


class BootSetupError(XenPciError):
    """A file of dom0's boot setup could not be read or written, or the tool
    that regenerates what the boot reads (update-grub, update-initramfs) failed."""


class RefusedError(XenPciError):
    """A safety rule refused the request before anything was written."""


class DomainError(XenPciError):
    """The domain does not exist or cannot take PCI devices."""


class HotplugError(XenPciError):
    """An attach or detach step failed; ``left`` says what state remains."""


def with_context(exc, prefix="", suffix="", **details):
    """A copy of ``exc`` (same class, same details) whose message gains
    ``prefix``/``suffix`` and whose details gain ``details``; the original
    stays its cause (``raise with_context(exc, ...) from exc``)."""
    new = copy.copy(exc)
    new.msg = prefix + exc.msg + suffix
    new.args = (new.msg,)
    new.details = dict(exc.details)
    new.details.update((k, v) for k, v in details.items() if v is not None)
    return new

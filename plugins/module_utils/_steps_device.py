# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Steps on host devices: who owns a device, its pciback binding, its
privileged grants, its reset.

Ownership is libxl's: ``/libxl/pci/<bdf>/domid`` names the guest a device
is given to. ``Claim`` writes it in a transaction that refuses a device
another domain claimed meanwhile, under the host's pool lock, and its undo
removes only a claim that is still ours: a request that loses a race never
deletes the winner's bookkeeping. Every change of a pciback binding runs
under the same lock, so making a device assignable, giving it back and
claiming it never interleave.
"""

from __future__ import annotations

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf
from ansible_collections.xen.pci.plugins.module_utils._engine import Step, register
from ansible_collections.xen.pci.plugins.module_utils._errors import HypervisorError, RefusedError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._state import DOMID_IO, libxl_pci_path
from ansible_collections.xen.pci.plugins.module_utils._xenstore import Changes, remove_pruned

PCIBACK = "pciback"
# assign_device(DOMID_IO) errors that mean "nothing to quarantine" (no IOMMU, already there).
_QUARANTINE_OK = ("EOPNOTSUPP", "ENOSYS", "EBUSY")
# deassign_device(DOMID_IO) errors that mean "it was never quarantined" (hidden at boot).
_DEQUARANTINE_OK = ("ENODEV", "EOPNOTSUPP", "ENOSYS", "EINVAL")
_GONE = ("ESRCH",)       # the domain no longer exists: nothing of it to revoke


def _bdfs(step):
    return ", ".join(step.data["bdfs"])


def _owner(ctx, bdf, tx=0):
    value = ctx.xs.read(libxl_pci_path(bdf, "domid"), tx=tx, deadline=ctx.deadline)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return value


@register
class Claim(Step):
    """``/libxl/pci/<bdf>/domid`` = the guest, for every device, atomically.
    data: domid, label, bdfs, pciback (the devices that must already be
    bound to pciback: the others are seized by a later step)."""

    kind = "claim"
    host_wide = True

    def describe(self):
        return "claim %s for %s" % (_bdfs(self), self.data["label"])

    def touches(self):
        return [libxl_pci_path(b, "domid") for b in self.data["bdfs"]]

    def do(self, ctx):
        domid, sysfs = self.data["domid"], ctx.platform.sysfs
        with ctx.platform.pool_lock(ctx.deadline):
            if sysfs is not None:
                for bdf in self.data.get("pciback", []):
                    driver = sysfs.driver_name(bdf)
                    if driver != PCIBACK:
                        raise RefusedError("%s is no longer assignable (bound to %s); it was given back meanwhile" % (
                            bdf, driver or "no driver"), device=bdf, domain=domid, driver=driver)

            def body(tx):
                bdfs = self.data["bdfs"]
                values = ctx.xs.read_many([libxl_pci_path(b, "domid") for b in bdfs] + [libxl_pci_path(b) for b in bdfs],
                                          tx=tx, deadline=ctx.deadline)
                changes = Changes()
                for bdf in bdfs:
                    have = values[libxl_pci_path(bdf, "domid")]
                    if have is not None and have != str(domid):
                        raise RefusedError("%s was claimed by domid %s meanwhile; not taking it for %s" % (
                            bdf, have, self.data["label"]), device=bdf, domain=domid, holder=have)
                    if have is None:
                        changes.write(libxl_pci_path(bdf, "domid"), str(domid))
                ctx.xs.apply(changes, tx=tx, deadline=ctx.deadline)
                # The device nodes this claim created: its undo removes them too.
                return [b for b in bdfs if values[libxl_pci_path(b)] is None]
            self.result["created"] = ctx.xs.transaction(body, ctx.deadline, what=self.describe())

    def undo(self, ctx):
        release(ctx, self.data["domid"], self.data["bdfs"], self.describe(), prune=self.result.get("created", ()))


def release(ctx, domid, bdfs, what, prune=()):
    """Remove the claims of ``bdfs`` that are ``domid``'s; others stay.
    Only the ``domid`` node goes, as libxl removes it (its empty device node
    stays), except for the devices in ``prune``, whose node this request
    created and whose undo removes it again when it is left empty."""
    with ctx.platform.pool_lock(ctx.deadline):
        def body(tx):
            values = ctx.xs.read_many([libxl_pci_path(b, "domid") for b in bdfs], tx=tx, deadline=ctx.deadline)
            ours = [b for b in bdfs if values[libxl_pci_path(b, "domid")] == str(domid)]
            for bdf in ours:
                ctx.xs.rm(libxl_pci_path(bdf, "domid"), tx=tx, deadline=ctx.deadline)
            _prune(ctx, [b for b in ours if b in set(prune)], tx)
        ctx.xs.transaction(body, ctx.deadline, what=what)


def _prune(ctx, bdfs, tx):
    """Remove the device nodes of ``bdfs`` that are empty (and /libxl/pci
    itself when it is left empty)."""
    if bdfs:
        remove_pruned(ctx.xs, [], "/libxl", ctx.deadline, "", tx=tx, parents=[libxl_pci_path(b) for b in bdfs])


@register
class Unclaim(Step):
    """The last step of a detach: the devices are nobody's again. data: domid, label, bdfs."""

    kind = "unclaim"
    host_wide = True

    def describe(self):
        return "release the claim of %s on %s" % (_bdfs(self), self.data["label"])

    def touches(self):
        return [libxl_pci_path(b, "domid") for b in self.data["bdfs"]]

    def do(self, ctx):
        release(ctx, self.data["domid"], self.data["bdfs"], self.describe())

    def undo(self, ctx):
        """Nothing: a detach is finished forward."""


# -- the assignable pool -------------------------------------------------------


def to_pool(ctx, step, bdf, driver, driver_path):
    """Bind ``bdf`` to pciback as xl pci-assignable-add does: remember and
    leave its dom0 driver, new_slot + bind, quarantine. ``driver``: the
    driver validation saw (the device must still be on it)."""
    sysfs, xs = ctx.platform.sysfs, ctx.xs
    now = sysfs.driver_name(bdf)
    if now == PCIBACK:
        return
    if now is not None:
        if now != driver:
            raise RefusedError("%s is now bound to %s, not to %s as when the request was checked" % (bdf, now, driver),
                               device=bdf, driver=now)
        if xs.read(libxl_pci_path(bdf), deadline=ctx.deadline) is None:
            step.result["created"] = True      # the undo removes the device node again
        xs.write(libxl_pci_path(bdf, "driver_path"), driver_path, deadline=ctx.deadline)
        ctx.checkpoint("remembered")
        sysfs.unbind(bdf)
        ctx.checkpoint("unbound")
        step.result["unbound_from"] = now
    sysfs.bind_pciback(bdf)
    ctx.checkpoint("bound")
    xenctrl = ctx.platform.xenctrl
    if xenctrl is not None:
        try:
            xenctrl.assign_device(DOMID_IO, Bdf.parse(bdf).sbdf, 0)
        except HypervisorError as exc:
            if exc.errno not in _QUARANTINE_OK:
                raise
        ctx.checkpoint("quarantined")


def from_pool(ctx, bdf, driver_path, forget_driver_path, prune=False):
    """Take ``bdf`` out of pciback (dequarantine, unbind, remove_slot) and,
    with ``driver_path``, give it back to that dom0 driver. With
    ``forget_driver_path``, delete libxl's record of it once given back (the
    leaf, as libxl does; with ``prune``, its device node too when empty)."""
    sysfs, xs = ctx.platform.sysfs, ctx.xs
    if sysfs.driver_name(bdf) == PCIBACK:
        xenctrl = ctx.platform.xenctrl
        if xenctrl is not None:
            try:
                xenctrl.deassign_device(DOMID_IO, Bdf.parse(bdf).sbdf)
            except HypervisorError as exc:
                if exc.errno not in _DEQUARANTINE_OK:
                    raise
        ctx.checkpoint("dequarantined")
        sysfs.unbind_pciback(bdf)
        ctx.checkpoint("unbound")
    elif sysfs.pciback_loaded() and bdf in sysfs.pciback_slots():
        sysfs.unbind_pciback(bdf)     # a slot left by an interrupted bind
    if driver_path and sysfs.driver_name(bdf) is None:
        sysfs.bind_driver(bdf, driver_path)
        ctx.checkpoint("rebound")
    if forget_driver_path and (not driver_path or sysfs.driver_path(bdf) == driver_path):
        leaf = libxl_pci_path(bdf, "driver_path")
        if prune:
            remove_pruned(xs, [leaf], "/libxl", ctx.deadline, "forgetting the driver of %s" % bdf)
        else:
            xs.rm(leaf, deadline=ctx.deadline)


def _not_someone_elses(ctx, bdf, domid):
    owner = _owner(ctx, bdf)
    if owner is not None and owner != domid:
        raise RefusedError("%s is now claimed by domid %s; leaving its binding alone" % (bdf, owner), device=bdf, holder=owner)


@register
class Seize(Step):
    """Make one device assignable (pciback), for a guest (``seize``,
    ``make_assignable``) or for the pool. data: bdf, driver (what it was
    bound to, or None), driver_path (libxl's /sys/bus/pci/drivers/<name>),
    domid (the claiming guest, or None), label."""

    kind = "seize"
    host_wide = True

    def describe(self):
        bdf, driver = self.data["bdf"], self.data["driver"]
        how = "take %s from the dom0 driver %s into pciback" % (bdf, driver) if driver else "bind %s to pciback" % bdf
        return "%s and quarantine it%s" % (how, " for %s" % self.data["label"] if self.data.get("label") else "")

    def touches(self):
        bdf = self.data["bdf"]
        return ["the pciback binding of %s" % bdf] + ([libxl_pci_path(bdf, "driver_path")] if self.data["driver"] else [])

    def do(self, ctx):
        with ctx.platform.pool_lock(ctx.deadline):
            to_pool(ctx, self, self.data["bdf"], self.data["driver"], self.data["driver_path"])

    def undo(self, ctx):
        bdf, driver = self.data["bdf"], self.data["driver"]
        if driver == PCIBACK:
            return
        with ctx.platform.pool_lock(ctx.deadline):
            _not_someone_elses(ctx, bdf, self.data.get("domid"))
            from_pool(ctx, bdf, self.data["driver_path"] if driver else None, forget_driver_path=bool(driver),
                      prune=bool(self.result.get("created")) and self.data.get("domid") is None)
            if driver and ctx.platform.sysfs.driver_name(bdf) != driver:
                raise XenPciError("%s could not be given back to %s (bound to %s)" % (
                    bdf, driver, ctx.platform.sysfs.driver_name(bdf) or "no driver"), device=bdf, driver=driver)


@register
class GiveBack(Step):
    """Take one device out of the pool (xl pci-assignable-remove [-r]).
    data: bdf, rebind (bool), driver_path (remembered, or None), driver
    (what it is bound to now), name (its libxl name, forgotten too)."""

    kind = "give-back"
    host_wide = True

    def describe(self):
        bdf = self.data["bdf"]
        if self.data["rebind"] and self.data["driver_path"]:
            return "take %s out of quarantine and pciback, rebind %s to %s" % (bdf, bdf, self.data["driver_path"])
        return "take %s out of quarantine and pciback (left with no driver)" % bdf

    def touches(self):
        return ["the pciback binding of %s" % self.data["bdf"], libxl_pci_path(self.data["bdf"])]

    def do(self, ctx):
        bdf = self.data["bdf"]
        with ctx.platform.pool_lock(ctx.deadline):
            owner = _owner(ctx, bdf)
            if owner is not None:
                raise RefusedError("%s was attached to domid %s meanwhile; not giving it back" % (bdf, owner),
                                   device=bdf, holder=owner)
            rebind = self.data["driver_path"] if self.data["rebind"] else None
            from_pool(ctx, bdf, rebind, forget_driver_path=bool(rebind))

    def undo(self, ctx):
        bdf = self.data["bdf"]
        if self.data["driver"] != PCIBACK:
            return
        with ctx.platform.pool_lock(ctx.deadline):
            now = ctx.platform.sysfs.driver_name(bdf)
            driver_path = self.data["driver_path"]
            to_pool(ctx, self, bdf, now, driver_path or "/sys/bus/pci/drivers/%s" % now)


@register
class SetName(Step):
    """libxl's device name (``/libxl/pci/<bdf>/name``). data: bdf, name (None: forget), old."""

    kind = "set-name"
    host_wide = True

    def describe(self):
        if self.data["name"] is None:
            return "forget the name of %s" % self.data["bdf"]
        return "name %s %r" % (self.data["bdf"], self.data["name"])

    def touches(self):
        return [libxl_pci_path(self.data["bdf"], "name")]

    def _set(self, ctx, value):
        path = libxl_pci_path(self.data["bdf"], "name")
        with ctx.platform.pool_lock(ctx.deadline):
            if value is None:
                ctx.xs.rm(path, deadline=ctx.deadline)        # the leaf, as libxl removes it
            else:
                ctx.xs.write(path, value, deadline=ctx.deadline)

    def do(self, ctx):
        self._set(ctx, self.data["name"])

    def undo(self, ctx):
        self._set(ctx, self.data["old"])


# -- privileged grants -----------------------------------------------------------


@register
class Grant(Step):
    """The privileged access of devices to a domain (I/O memory and ports,
    the legacy IRQ, permissive, the IOMMU assignment). data: domid, label,
    devices [{bdf, permissive, rdm_policy}], assign (False for a stub
    domain, whose QEMU maps the device for its guest)."""

    kind = "grant"

    def describe(self):
        return "grant %s to %s%s" % (", ".join(d["bdf"] for d in self.data["devices"]), self.data["label"],
                                     "" if self.data["assign"] else " (stub domain: no IOMMU assignment)")

    def touches(self):
        return ["the grants of %s to domid %d" % (d["bdf"], self.data["domid"]) for d in self.data["devices"]]

    def do(self, ctx):
        grants = ctx.platform.grants
        if grants is None:
            return
        for dev in self.data["devices"]:
            record = grants.grant(self.data["domid"], dev["bdf"], permissive=dev["permissive"], assign=self.data["assign"],
                                  rdm_policy=dev["rdm_policy"])
            self.result[dev["bdf"]] = record.get("pirq")
            ctx.checkpoint("granted-%s" % dev["bdf"])

    def undo(self, ctx):
        # In this process a grant that failed rolled its own steps back:
        # revoke what was granted. From a journal nothing is known: revoke all.
        bdfs = [d["bdf"] for d in self.data["devices"]]
        if self.ran:
            bdfs = [b for b in bdfs if b in self.result]
        revoke(ctx, self.data["domid"], bdfs, self.data["assign"], self.result)


def revoke(ctx, domid, bdfs, deassign, pirqs):
    """Revoke the grants of ``bdfs`` (idempotent); a domain that is gone has none."""
    grants = ctx.platform.grants
    if grants is None:
        return
    failed = []
    for bdf in bdfs:
        try:
            grants.revoke(domid, bdf, deassign=deassign, pirq=pirqs.get(bdf))
        except HypervisorError as exc:
            if exc.errno in _GONE:
                continue
            failed.append(exc)
    if failed:
        raise failed[0]


@register
class Revoke(Step):
    """Revoke the grants of detached devices. data: domid, label, bdfs, deassign."""

    kind = "revoke"

    def describe(self):
        return "revoke the grants of %s from %s" % (_bdfs(self), self.data["label"])

    def touches(self):
        return ["the grants of %s to domid %d" % (b, self.data["domid"]) for b in self.data["bdfs"]]

    def do(self, ctx):
        revoke(ctx, self.data["domid"], self.data["bdfs"], self.data["deassign"], {})

    def undo(self, ctx):
        """Nothing: a detach is finished forward."""


@register
class Reset(Step):
    """Reset detached devices as libxl does (pciback's do_flr, else the
    device's reset file). A device without a reset, or whose reset fails,
    is reported in the warnings and in ``reset_failed``, never hidden. data: bdfs."""

    kind = "reset"

    def describe(self):
        return "reset %s" % _bdfs(self)

    def do(self, ctx):
        sysfs = ctx.platform.sysfs
        if sysfs is None:
            return
        for bdf in self.data["bdfs"]:
            try:
                self.result[bdf] = sysfs.reset(bdf)
            except XenPciError as exc:
                self.result[bdf] = None
                ctx.report.warnings.append("reset of %s failed: %s" % (bdf, exc.msg))
                ctx.report.reset_failed.append({"bdf": bdf, "error": exc.msg, "errno": exc.details.get("errno")})

    def undo(self, ctx):
        """Nothing to take back."""

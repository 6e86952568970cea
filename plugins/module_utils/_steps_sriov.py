# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Steps of SR-IOV: the number of a physical function's virtual functions,
and taking a virtual function this request created into the pool.

Both run under the host's pool lock: a VF appears or disappears, and is
bound to pciback, while no other request changes the pool.
"""

from __future__ import annotations

from ansible_collections.xen.pci.plugins.module_utils._engine import Step, register
from ansible_collections.xen.pci.plugins.module_utils._errors import HypervisorError, RefusedError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._state import libxl_pci_path
from ansible_collections.xen.pci.plugins.module_utils._steps_device import PCIBACK, Seize, from_pool, to_pool
from ansible_collections.xen.pci.plugins.module_utils._xenstore import remove_pruned


def _set(ctx, pf, count):
    """``sriov_numvfs`` = count, through 0 when both are non-zero (Linux
    refuses N -> M with EBUSY)."""
    sysfs = ctx.platform.sysfs
    now = sysfs.sriov(pf)["numvfs"]
    if now == count:
        return
    if now and count:
        sysfs.set_numvfs(pf, 0)
        ctx.checkpoint("vfs-disabled")
    sysfs.set_numvfs(pf, count)
    ctx.checkpoint("vfs-set")


def _forget_empty(ctx, gone):
    """libxl's empty device nodes of VFs that no longer exist (a VF given
    back keeps an empty ``/libxl/pci/<bdf>``, as xl leaves it; once the VF is
    gone it names nothing). Nodes that still hold something stay."""
    if not gone:
        return
    values = ctx.xs.read_many([libxl_pci_path(vf) for vf in gone], deadline=ctx.deadline)
    present = [path for path, value in values.items() if value is not None]
    if present:
        remove_pruned(ctx.xs, [], "/libxl", ctx.deadline, "forgetting the removed virtual functions", parents=present)


@register
class SetNumVfs(Step):
    """The number of VFs of one PF. data: pf, old, new, vfs (the addresses
    the new VFs must have), vfs_now (those that go)."""

    kind = "sriov-numvfs"
    host_wide = True

    def describe(self):
        pf, old, new = self.data["pf"], self.data["old"], self.data["new"]
        if new == 0:
            return "remove the %d virtual functions of %s (sriov_numvfs %d -> 0)" % (old, pf, old)
        return "create %d virtual functions of %s (sriov_numvfs %d -> %d%s)" % (
            new, pf, old, new, ", through 0" if old else "")

    def touches(self):
        return ["%s/sriov_numvfs" % self.data["pf"]] + ["the device %s" % vf for vf in self.data["vfs"]]

    def do(self, ctx):
        sysfs = ctx.platform.sysfs
        with ctx.platform.pool_lock(ctx.deadline):
            # Checked again under the lock: a VF that entered the pool since
            # the plan would vanish under pciback's and libxl's bookkeeping.
            vfs = sysfs.sriov(self.data["pf"])["vfs"]
            claims = ctx.xs.read_many([libxl_pci_path(vf, "domid") for vf in vfs], deadline=ctx.deadline) if vfs else {}
            for vf in vfs:
                if sysfs.driver_name(vf) == PCIBACK or claims[libxl_pci_path(vf, "domid")]:
                    raise RefusedError("%s, a virtual function of %s, was made assignable or attached meanwhile; not "
                                       "removing it" % (vf, self.data["pf"]), device=vf)
            _set(ctx, self.data["pf"], self.data["new"])
            _forget_empty(ctx, [vf for vf in self.data["vfs_now"] if vf not in self.data["vfs"]])

    def verify(self, ctx):
        info = ctx.platform.sysfs.sriov(self.data["pf"])
        if info["numvfs"] != self.data["new"] or info["vfs"] != self.data["vfs"]:
            raise XenPciError("%s: sriov_numvfs is %d with virtual functions %s; %d were asked, at %s" % (
                self.data["pf"], info["numvfs"], ", ".join(info["vfs"]) or "none", self.data["new"],
                ", ".join(self.data["vfs"]) or "none"), device=self.data["pf"], vfs=info["vfs"])

    def undo(self, ctx):
        with ctx.platform.pool_lock(ctx.deadline):
            _set(ctx, self.data["pf"], self.data["old"])


@register
class SeizeVf(Seize):
    """Take a VF that this request created into the pool. Its driver is
    known only once it exists (the PF's driver may have bound a VF driver
    to it, which is then remembered like any dom0 driver). The host's
    checks of a pool device (an IOMMU, the reset policy) run then, too.
    data: bdf, pf, reset (the policy), label."""

    kind = "seize-vf"

    def describe(self):
        return "bind %s (a new virtual function of %s) to pciback and quarantine it" % (self.data["bdf"], self.data["pf"])

    def touches(self):
        return ["the pciback binding of %s" % self.data["bdf"], libxl_pci_path(self.data["bdf"], "driver_path")]

    def do(self, ctx):
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.xen.pci.plugins.module_utils._validate import pool_entry_problem
        sysfs, bdf = ctx.platform.sysfs, self.data["bdf"]
        with ctx.platform.pool_lock(ctx.deadline):
            if not sysfs.exists(bdf):
                raise XenPciError("%s, a virtual function of %s, did not appear" % (bdf, self.data["pf"]), device=bdf)
            problem = pool_entry_problem(ctx.platform, bdf, self.data.get("reset", "best_effort"), ctx.report.warnings, {})
            if problem is not None:
                raise problem.kind(problem.msg, device=bdf)
            driver = sysfs.driver_name(bdf)
            self.result["driver"] = driver
            driver_path = sysfs.driver_path(bdf) if driver not in (None, PCIBACK) else None
            self.result["driver_path"] = driver_path
            try:
                to_pool(ctx, self, bdf, driver, driver_path)
            except HypervisorError as exc:
                if exc.errno == "ENODEV":
                    raise HypervisorError("Xen does not know %s, a virtual function of %s: dom0's kernel did not "
                                          "report it to Xen (Xen 4.20 and later take a VF only after its PF was "
                                          "reported)" % (bdf, self.data["pf"]), "ENODEV", device=bdf) from exc
                raise

    def undo(self, ctx):
        sysfs, bdf = ctx.platform.sysfs, self.data["bdf"]
        with ctx.platform.pool_lock(ctx.deadline):
            driver_path = self.result.get("driver_path")
            if driver_path is None:
                # Killed inside do(): the journal has no result, but the
                # driver was remembered in xenstore before it was left.
                driver_path = ctx.xs.read(libxl_pci_path(bdf, "driver_path"), deadline=ctx.deadline)
            if sysfs.exists(bdf):
                from_pool(ctx, bdf, driver_path, forget_driver_path=bool(driver_path), prune=bool(self.result.get("created")))
                return
            # The VF is gone already (its PF's VFs were removed): only
            # pciback's slot and libxl's record of it can be left.
            if sysfs.pciback_loaded() and bdf in sysfs.pciback_slots():
                sysfs.write(sysfs.pciback_path("remove_slot"), bdf, bdf)
            remove_pruned(ctx.xs, [libxl_pci_path(bdf, "driver_path")], "/libxl", ctx.deadline,
                          "forgetting the driver of %s" % bdf)

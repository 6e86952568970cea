# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI hotplug into PV domains (and PV stub domains) through xenstore.

The protocol is libxl's (PROTOCOL.md sections 3-5) with the rule of Xen
commit 73ee2795aaef: wait for the backend to be Connected only when the
backend exists and the guest's pcifront is connected. A backend that does not
exist yet is created with the devices in it, without waiting: there is
nothing to race with, and a guest being built (or a stub domain of a HVM
guest being built) would never get there.

Unlike libxl:
- ``num_devs`` is read inside the transaction that appends the devices;
- every device of a request goes into one Reconfiguring cycle;
- the result is confirmed (backend back at Connected, ``state-N`` = 3, or the
  device gone), bounded by the request's deadline, and reported otherwise;
- a failure part-way undoes what this request wrote, or says what is left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List

from ansible_collections.xen.pci.plugins.module_utils._errors import DeadlineExceeded, HotplugError
from ansible_collections.xen.pci.plugins.module_utils._state import (
    CLOSED, CLOSING, CONNECTED, INITIALISED, INITIALISING, PER_INDEX_KEYS, RECONFIGURING,
    backend_path, error_path, frontend_path, read_backend, state_name)
from ansible_collections.xen.pci.plugins.module_utils._xenstore import Changes

# Caps on single waits, inside the request's own deadline. libxl waits 10 s
# for a backend; a guest's pcifront normally answers in well under a second,
# but real Xen under QEMU TCG showed pcifront taking 8 s for a removal cycle
# and 14 s to go Connected, so the caps leave room for slow guests.
BACKEND_WAIT = 30.0
GUEST_CONNECT_WAIT = 30.0
# Between removing a backend and creating it again (see _rebuild).
REBUILD_SETTLE = 0.5
_TORN_DOWN = {}   # domid -> when this process last removed its backend


def backend_keys(func, index):
    """The backend keys of PciFunction ``func`` at ``index``, in libxl's order."""
    bdf = str(func.bdf)
    out = [("key-%d" % index, bdf), ("dev-%d" % index, bdf)]
    if func.vdevfn_value:
        out.append(("vdevfn-%d" % index, func.vdevfn_value))
    if func.name:
        out.append(("name-%d" % index, func.name))
    out += [("opts-%d" % index, func.opts), ("state-%d" % index, str(INITIALISING))]
    return out


@dataclass
class Report:
    """What a hotplug request did, for the module's ``actions`` and results."""

    actions: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    devices: Dict[str, dict] = field(default_factory=dict)
    waited: float = 0.0

    def step(self, text):
        self.actions.append(text)


def _backend_failed(values, domid):
    state = _int(values.get(backend_path(domid) + "/state"))
    err = values.get(error_path(domid))
    if state in (CLOSING, CLOSED) or err:
        return state, err
    return None


def _int(value):
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class PvHotplug:
    """Attach and detach for one PV domain (or PV stub domain)."""

    def __init__(self, xs, domid, name, report=None):
        self.xs = xs
        self.domid = domid
        self.name = name
        self.be = backend_path(domid)
        self.fe = frontend_path(domid)
        self.report = report or Report()

    def label(self):
        return "%s (domid %d)" % (self.name, self.domid) if self.name else "domid %d" % self.domid

    # -- waits ---------------------------------------------------------------

    def _wait(self, paths, check, deadline, doing):
        start = deadline.elapsed()
        try:
            return self.xs.wait_until(paths, check, deadline, doing)
        finally:
            self.report.waited += deadline.elapsed() - start

    def wait_connected(self, deadline, why):
        """Wait for the backend to be Connected (4), or fail with what was seen."""
        paths = [self.be + "/state", error_path(self.domid)]

        def check(values):
            if values[self.be + "/state"] is None:
                raise HotplugError("Backend %s does not exist" % self.be, domain=self.domid)
            failed = _backend_failed(values, self.domid)
            if failed:
                raise HotplugError("PCI backend of %s failed (state %s): %s" % (self.label(), state_name(failed[0]), failed[1] or "no error node"),
                                   domain=self.domid, backend_state=failed[0], error_node=failed[1])
            return True if _int(values[self.be + "/state"]) == CONNECTED else None

        sub = deadline.sub(BACKEND_WAIT, "backend Connected")
        try:
            self._wait(paths, check, sub, "waiting for the PCI backend of %s to be Connected (4) %s" % (self.label(), why))
        except DeadlineExceeded as exc:
            seen = exc.details.get("seen", {})
            raise HotplugError(
                "PCI backend of %s stayed in state %s for %.1f s %s; nothing was written" % (
                    self.label(), state_name(_int(seen.get(self.be + "/state"))), sub.elapsed(), why),
                domain=self.domid, backend_state=_int(seen.get(self.be + "/state")), waited=round(sub.elapsed(), 3)) from None

    # -- attach --------------------------------------------------------------

    def must_wait(self, current):
        """The rule of Xen commit 73ee2795aaef: wait for Connected only if the
        backend exists and the guest is running, i.e. its pcifront is
        connected. (Callers handle only PV domains and PV stub domains.)"""
        return current is not None and current.fe_state == CONNECTED

    def prepare(self, deadline, bdfs):
        """Read the backend and wait if the rule says so, before any write."""
        current = read_backend(self.xs, self.domid, deadline)
        if current is not None and (current.state in (CLOSING, CLOSED) or current.error):
            raise HotplugError(
                "PCI backend of %s is broken (state %s, error %r); detach its devices or recreate the domain" % (
                    self.label(), state_name(current.state), current.error),
                domain=self.domid, backend_state=current.state, error_node=current.error)
        if self.must_wait(current) and (current is None or current.state != CONNECTED):
            self.wait_connected(deadline, "before attaching %s" % ", ".join(bdfs))
            current = read_backend(self.xs, self.domid, deadline)
        return current

    def attach(self, requests, deadline, running=True, prepared=False, current=None):
        """Put ``requests`` (PciFunction list) into the domain's backend.

        ``running``: the guest is running (False for a paused domain or one
        being built: then nothing is waited for). ``prepared``: the caller
        already ran ``prepare`` and passes its result as ``current``.
        Returns the indices used.
        """
        bdfs = [str(r.bdf) for r in requests]
        if not prepared:
            current = self.prepare(deadline, bdfs)
        if current is None:
            self._settle(deadline)
        while True:
            hot = current is not None and current.fe_state == CONNECTED
            try:
                outcome = self.xs.transaction(lambda tx: self._append(tx, requests, hot), deadline)
                break
            except _Changed:
                # Someone started a cycle, or the guest connected, between our
                # read and our transaction: look again, wait again if needed.
                deadline.check("attaching %s to %s" % (", ".join(bdfs), self.label()))
                current = self.prepare(deadline, bdfs)
        first, created, cycle = outcome
        if created:
            self.report.step("created the PCI backend of %s with %s (no wait: the backend did not exist)" % (self.label(), ", ".join(bdfs)))
        else:
            self.report.step("appended %s to the PCI backend of %s at index %d%s" % (
                ", ".join(bdfs), self.label(), first, " in one Reconfiguring cycle" if cycle else " (guest not connected: no cycle, no wait)"))
        indices = list(range(first, first + len(requests)))
        if cycle:
            self._confirm_attach(indices, bdfs, deadline, need_connected=True)
        elif created and running:
            self._confirm_attach(indices, bdfs, deadline, need_connected=False)
        else:
            self.report.warnings.append(
                "%s is not running: %s will be picked up by its pcifront when it connects" % (self.label(), ", ".join(bdfs)))
        return indices

    def _settle(self, deadline):
        """Give the kernels time to unregister a backend we removed moments
        ago before creating it again (see _rebuild)."""
        since = time.monotonic() - _TORN_DOWN.get(self.domid, -REBUILD_SETTLE)
        if since < REBUILD_SETTLE:
            time.sleep(min(REBUILD_SETTLE - since, deadline.remaining()))

    def _append(self, tx, requests, hot):
        xs = self.xs
        values = xs.read_many([self.be + "/num_devs", self.be + "/state", self.fe + "/state"], tx=tx)
        num = _int(values[self.be + "/num_devs"])
        changes = Changes()
        created = num is None
        if created:
            self.create_backend(changes)
            num = 0
        elif hot and (_int(values[self.be + "/state"]) != CONNECTED or _int(values[self.fe + "/state"]) != CONNECTED):
            raise _Changed()
        elif not hot and _int(values[self.fe + "/state"]) == CONNECTED:
            raise _Changed()
        for i, req in enumerate(requests):
            for key, value in backend_keys(req, num + i):
                changes.write("%s/%s" % (self.be, key), value)
        changes.write(self.be + "/num_devs", str(num + len(requests)))
        cycle = hot and not created and num > 0
        if cycle:
            changes.write(self.be + "/state", str(RECONFIGURING))
        xs.apply(changes, tx=tx)
        return num, created, cycle

    def create_backend(self, changes, state=INITIALISING):
        """Backend and frontend directories with libxl's keys and permissions."""
        changes.rm(self.be).mkdir(self.be).perms(self.be, ["n0", "r%d" % self.domid])
        changes.write(self.be + "/frontend", self.fe).write(self.be + "/frontend-id", str(self.domid))
        changes.write(self.be + "/online", "1").write(self.be + "/state", str(state))
        changes.write(self.be + "/domain", self.name or "")
        changes.rm(self.fe).mkdir(self.fe).perms(self.fe, ["n%d" % self.domid, "r0"])
        changes.write(self.fe + "/backend", self.be).write(self.fe + "/backend-id", "0")
        changes.write(self.fe + "/state", str(INITIALISING))

    def _confirm_attach(self, indices, bdfs, deadline, need_connected, wait_guest=True):
        """Wait until pciback exported every device (``state-N`` = 3) and,
        for a hot-add, the cycle is over (backend back at Connected)."""
        paths = [self.be + "/state", error_path(self.domid)] + ["%s/state-%d" % (self.be, i) for i in indices]
        paths += ["%s/vdev-%d" % (self.be, i) for i in indices]

        def exported(values):
            return all(_int(values["%s/state-%d" % (self.be, i)]) == INITIALISED for i in indices)

        def check(values):
            failed = _backend_failed(values, self.domid)
            if failed:
                return ("failed", failed)
            be_state = _int(values[self.be + "/state"])
            if exported(values) and (be_state == CONNECTED or (not need_connected and be_state is not None and be_state >= INITIALISED)):
                return ("ok", values)
            return None

        try:
            verdict, values = self._wait(paths, check, deadline, "waiting for pciback to export %s to %s" % (", ".join(bdfs), self.label()))
        except DeadlineExceeded as exc:
            seen = exc.details.get("seen", {})
            states = {bdf: state_name(_int(seen.get("%s/state-%d" % (self.be, i)))) for bdf, i in zip(bdfs, indices)}
            raise HotplugError("attach of %s to %s not confirmed after %.1f s: backend %s, devices %s" % (
                ", ".join(bdfs), self.label(), exc.details.get("waited", 0), state_name(_int(seen.get(self.be + "/state"))), states),
                domain=self.domid, devices=bdfs, backend_state=_int(seen.get(self.be + "/state")), device_states=states) from None
        if verdict == "failed":
            state, err = values
            raise HotplugError("pciback refused the attach of %s to %s: %s (backend state %s)" % (
                ", ".join(bdfs), self.label(), err or "no error node", state_name(state)),
                domain=self.domid, devices=bdfs, error_node=err, backend_state=state)
        for bdf, i in zip(bdfs, indices):
            self.report.devices[bdf] = {"index": i, "state": INITIALISED, "vdev": values.get("%s/vdev-%d" % (self.be, i))}
        if not need_connected and wait_guest:
            # A new backend: pciback may already be Connected while pcifront,
            # which scans the bus when it goes Connected, is not yet.
            self._wait_guest(deadline, bdfs)

    def _wait_guest(self, deadline, bdfs):
        """After creating a backend for a running guest: give its pcifront a
        bounded while to connect; a guest without pcifront never will."""
        sub = deadline.sub(GUEST_CONNECT_WAIT, "guest connect")
        paths = [self.be + "/state", self.fe + "/state", error_path(self.domid)]

        def check(values):
            if _backend_failed(values, self.domid):
                return "failed"
            # pcifront scans the new bus when it goes Connected, after pciback.
            both = _int(values[self.be + "/state"]) == CONNECTED and _int(values[self.fe + "/state"]) == CONNECTED
            return "ok" if both else None

        try:
            if self._wait(paths, check, sub, "waiting for the pcifront of %s" % self.label()) == "ok":
                self.report.step("the pcifront of %s connected" % self.label())
                return
        except DeadlineExceeded:
            pass
        self.report.warnings.append(
            "pciback exported %s but the pcifront of %s had not connected after %.0f s: the guest is slow, or has no "
            "xen-pcifront driver; it will see the devices when it connects" % (", ".join(bdfs), self.label(), sub.elapsed()))

    # -- detach --------------------------------------------------------------

    def detach(self, bdfs, deadline, force=False):
        """Remove ``bdfs`` from the backend; with ``force``, even if the guest
        never acknowledges. Returns the devices left in the backend."""
        current = read_backend(self.xs, self.domid, deadline)
        if current is None:
            return []
        present = [d for d in current.devices if d.bdf in set(bdfs)]
        if not present:
            return current.devices
        keep = [d for d in current.devices if d.bdf not in set(bdfs)]
        gone = [d.bdf for d in present]
        hot = current.fe_state == CONNECTED and current.state not in (CLOSING, CLOSED)
        if hot:
            try:
                if current.state != CONNECTED:
                    self.wait_connected(deadline, "before detaching %s" % ", ".join(gone))
                self._removal_cycle(present, deadline)
            except HotplugError as exc:
                if not force:
                    raise
                self.report.warnings.append("forced: %s" % exc.msg)
                return self._rebuild(keep, deadline, "forced detach of %s" % ", ".join(gone))
        elif keep:
            # No pcifront to run a cycle with: rebuilding the backend makes
            # pciback drop every device and take back only the others.
            return self._rebuild(keep, deadline, "detach of %s from a guest that is not connected" % ", ".join(gone))
        if not keep:
            self.teardown(deadline)
            self.report.step("removed the last devices (%s) and the PCI backend of %s" % (", ".join(gone), self.label()))
            return []
        self.xs.transaction(lambda tx: self.renumber(tx, keep), deadline)
        self.report.step("removed %s from the PCI backend of %s and renumbered %d remaining" % (", ".join(gone), self.label(), len(keep)))
        return keep

    def _removal_cycle(self, present, deadline):
        gone = [d.bdf for d in present]

        def body(tx):
            state = _int(self.xs.read(self.be + "/state", tx=tx))
            if state != CONNECTED:
                raise _Changed()
            changes = Changes()
            for dev in present:
                changes.write("%s/state-%d" % (self.be, dev.index), str(CLOSING))
            changes.write(self.be + "/state", str(RECONFIGURING))
            self.xs.apply(changes, tx=tx)

        while True:
            try:
                self.xs.transaction(body, deadline)
                break
            except _Changed:
                self.wait_connected(deadline, "before detaching %s" % ", ".join(gone))
        self.report.step("asked the guest %s to release %s in one Reconfiguring cycle" % (self.label(), ", ".join(gone)))
        sub = deadline.sub(BACKEND_WAIT, "guest release")
        paths = [self.be + "/state", error_path(self.domid)]

        def check(values):
            if _backend_failed(values, self.domid):
                return "failed"
            return "ok" if _int(values[self.be + "/state"]) == CONNECTED else None

        try:
            verdict = self._wait(paths, check, sub, "waiting for %s to release %s" % (self.label(), ", ".join(gone)))
        except DeadlineExceeded as exc:
            seen = exc.details.get("seen", {})
            raise HotplugError("%s did not release %s within %.1f s (backend state %s); use force to detach anyway" % (
                self.label(), ", ".join(gone), sub.elapsed(), state_name(_int(seen.get(self.be + "/state")))),
                domain=self.domid, devices=gone, backend_state=_int(seen.get(self.be + "/state"))) from None
        if verdict == "failed":
            backend = read_backend(self.xs, self.domid, deadline)
            raise HotplugError("PCI backend of %s failed while releasing %s: %s" % (
                self.label(), ", ".join(gone), backend.error if backend else "backend gone"),
                domain=self.domid, devices=gone, error_node=backend.error if backend else None)

    def renumber(self, tx, keep):
        """Leave exactly the keys libxl would leave: ``keep`` at 0..k-1, in order."""
        names = self.xs.directory(self.be, tx=tx) or []
        values = self.xs.read_many(["%s/%s" % (self.be, n) for n in names], tx=tx)
        old = {n: values["%s/%s" % (self.be, n)] for n in names}
        want = {}
        for new_index, dev in enumerate(keep):
            for key in PER_INDEX_KEYS:
                value = old.get("%s-%d" % (key, dev.index))
                if value is not None:
                    want["%s-%d" % (key, new_index)] = value
        changes = Changes()
        for name in names:
            base, _sep, idx = name.rpartition("-")
            if base in PER_INDEX_KEYS and idx.isdigit() and name not in want:
                changes.rm("%s/%s" % (self.be, name))
        for name, value in want.items():
            if old.get(name) != value:
                changes.write("%s/%s" % (self.be, name), value)
        changes.write(self.be + "/num_devs", str(len(keep)))
        self.xs.apply(changes, tx=tx)

    def teardown(self, deadline):
        """Remove frontend and backend (pciback and pcifront let go when their nodes vanish)."""
        _TORN_DOWN[self.domid] = time.monotonic()

        def body(tx):
            changes = Changes().rm(self.fe).rm(self.be).rm("/libxl/%d/device/pci/0" % self.domid)
            self.xs.apply(changes, tx=tx)
            # Prune parents left empty, as libxl's device destroy does.
            for parent in ("/local/domain/%d/device/pci" % self.domid, backend_path(self.domid).rsplit("/", 1)[0],
                           "/local/domain/0/backend/pci"):
                if self.xs.directory(parent, tx=tx) == []:
                    self.xs.rm(parent, tx=tx)
        self.xs.transaction(body, deadline)

    def _rebuild(self, keep, deadline, why):
        """Recreate the backend holding only ``keep`` (or just remove it if empty).

        Two transactions: removing and recreating the nodes in one would go
        unnoticed by the kernels (xenbus re-probes a device only when its node
        is gone when the watch fires), leaving pciback and pcifront in their
        failed state. Between the two, the drivers' watch handlers need a
        moment to unregister the old devices; xenstore shows no sign of it,
        so that one pause is a fixed, short sleep (REBUILD_SETTLE).
        """
        self.teardown(deadline)
        if not keep:
            self.report.step("%s: removed the PCI backend of %s" % (why, self.label()))
            return []
        self._settle(deadline)
        requests = [d.function() for d in keep]

        def body(tx):
            changes = Changes()
            self.create_backend(changes)
            for i, req in enumerate(requests):
                for key, value in backend_keys(req, i):
                    changes.write("%s/%s" % (self.be, key), value)
            changes.write(self.be + "/num_devs", str(len(requests)))
            changes.rm(error_path(self.domid))
            self.xs.apply(changes, tx=tx)
        self.xs.transaction(body, deadline)
        self.report.step("%s: rebuilt the PCI backend of %s with %s" % (why, self.label(), ", ".join(d.bdf for d in keep)))
        # pciback must take the kept devices back; the guest (not connected,
        # or not answering) is not waited for.
        self._confirm_attach(list(range(len(keep))), [d.bdf for d in keep], deadline, need_connected=False, wait_guest=False)
        return keep


class _Changed(Exception):
    """The backend moved under us between the read and the transaction."""

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finishing what a killed request left: every journal a run finds.

A journal is left only while its request runs (it holds the journal's lock)
or after the request died (the kernel released its locks). So a run that
gets the lock of a journal knows its owner is gone, and finishes or rolls
back that request (``_engine.recover``) before doing anything else; a
journal whose lock stays held belongs to a live request and is left alone.
"""

from __future__ import annotations

from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._engine import recover
from ansible_collections.xen.pci.plugins.module_utils._errors import DeadlineExceeded, XenPciError, with_context
from ansible_collections.xen.pci.plugins.module_utils._journal import POOL_KEY, read_journals
from ansible_collections.xen.pci.plugins.module_utils._lock import FileLock, domain_lock_path

# How long to try the lock of a journal this request does not need: a held
# lock means a live request, not one to recover.
PROBE_LOCK = 0.05


def _domid_of(record):
    if record.key.startswith("dom-") and record.key[4:].isdigit():
        return int(record.key[4:])
    return None


def _lock_for(ctx, host, record, held):
    """The lock the journal's owner held, if we can have it now (None: we
    hold it already or locking is off; False: a live request holds it)."""
    platform = ctx.platform
    if not platform.locking:
        return None
    domid = _domid_of(record)
    if domid is not None:
        if domid in held:
            return None
        dom = host.domains.get(domid)
        uuid = (record.meta or {}).get("uuid") or (dom.uuid if dom is not None else None)
        lock = FileLock(domain_lock_path(platform.userdata_dir, domid, uuid))
        try:
            return lock.acquire(Deadline(PROBE_LOCK, "journal lock"))
        except DeadlineExceeded:
            return False
    return None


def recover_journals(ctx, host, held=(), required=()):
    """Recover every journal of ``host`` whose owner is gone. ``held``:
    domids whose locks the caller holds; ``required``: domids the caller's
    request changes (a journal of theirs that cannot be finished fails the
    request). Returns the summaries, also put in ``ctx.report.recovered``."""
    out = []
    for record in host.journals:
        domid = _domid_of(record)
        pool = record.key == POOL_KEY
        if domid is None and not pool:
            ctx.report.warnings.append("unknown journal %s left alone" % record.path)
            continue
        try:
            out += _recover_one(ctx, host, record, held, pool)
        except XenPciError as exc:
            if domid in required or pool and "pool" in required:
                raise with_context(exc, "an interrupted request on %s could not be finished: " % (
                    (record.meta or {}).get("label") or record.key)) from exc
            ctx.report.warnings.append("an interrupted request (journal %s) could not be finished: %s" % (
                record.path, exc.msg))
            out.append(dict(record.summary(), outcome="failed", error=exc.msg))
    ctx.report.recovered += out
    return out


def _recover_one(ctx, host, record, held, pool):
    if pool:
        if ctx.platform.locking and ctx.platform._pool_depth == 0:     # pylint: disable=protected-access
            try:
                with ctx.platform.pool_lock(Deadline(PROBE_LOCK, "pool lock")):
                    return _recover_locked(ctx, host, record)
            except DeadlineExceeded:
                return []
        return _recover_locked(ctx, host, record)
    lock = _lock_for(ctx, host, record, held)
    if lock is False:
        return []
    try:
        return _recover_locked(ctx, host, record)
    finally:
        if lock:
            lock.release()


def _recover_locked(ctx, host, record):
    # Read it again under the lock: another run may have finished it meanwhile.
    fresh = read_journals(ctx.xs, [record.key], ctx.deadline)
    if not fresh:
        return []
    record = fresh[0]
    dom = host.domains.get(record.domid) if record.domid is not None else None
    summary = recover(ctx, record, domain_uuid=dom.uuid if dom is not None else None)
    ctx.report.step("recovered the interrupted %s of %s: %s" % (
        (record.meta or {}).get("op"), (record.meta or {}).get("label") or record.key, summary.get("outcome")))
    return [summary]

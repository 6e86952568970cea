"""Reading oxenstored access logs, real or simulated, for fidelity checks.

Real Xen's dom0 logs every xenstore access to
``/var/log/xen/xenstored-access.log``; the simulator keeps the same records
(``Store.access_log``, printed by ``format_access_log``). The functions here
turn either into comparable sequences: what the kernels (xen-pciback as
``D0``, the guest's xen-pcifront as ``D<guest domid>``) did in answer to a
toolstack, and what the toolstack itself wrote. Transaction ids and the
kernels' heap-address watch tokens differ from run to run and are
abstracted; everything else is compared as logged.
"""

from __future__ import annotations

import re

# [<date>]  <label[.tx]>  <op>  <path> [<value>]; "w event" is the one op with a space.
_LINE = re.compile(r"^\[(\S+)\]\s+(\S+)\s+(w event|\S+)\s+(\S+)\s?(.*?)\s*$")
_STATE = re.compile(r"(backend|device)/pci/\d+(/\d+)?/state$")
TOOLSTACK_OPS = ("write", "rm", "mkdir", "setperms")


def parse(text):
    """[(label, tx, op, path, value)] of an access log's text, in order.

    Lines that are not records (comments, blank) are skipped."""
    entries = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        _stamp, who, op, path, value = match.groups()
        label, _dot, tx = who.partition(".")
        entries.append((label, int(tx or 0), op, path, value))
    return entries


def kernel_ops(entries, kernels=("D0", "D1"), ops=("write", "rm", "watch", "unwatch")):
    """{label: [(op, path, value, tx order)]} of the kernel connections.

    A transaction id becomes its order of appearance on that connection (real
    and simulated kernels number transactions differently); watch tokens that
    are heap addresses become ``<heap>`` (xenbus's fixed tokens are kept)."""
    out = {label: [] for label in kernels}
    txmap = {}
    for label, tx, op, path, value in entries:
        if label not in out or op not in ops:
            continue
        key = (label, tx)
        if tx and key not in txmap:
            txmap[key] = len([k for k in txmap if k[0] == label]) + 1
        if op in ("watch", "unwatch") and not value.startswith("FFFFFFFF"):
            value = "<heap>"
        out[label].append((op, path, value, txmap.get(key, 0)))
    return out


def state_order(entries, kernels=("D0", "D1")):
    """[(label, 'backend'|'device', value)]: the interleaved order of the
    kernels' backend/frontend state writes."""
    return [(label, path.rsplit("/", 3)[0].split("/")[0], value) for label, _tx, op, path, value in entries
            if label in kernels and op == "write" and _STATE.search(path)]


def toolstack_ops(entries, ops=TOOLSTACK_OPS):
    """[(op, path, value, in a transaction)] of the non-kernel connections
    (``A<n>``), in order: what a toolstack wrote."""
    return [(op, path, value, bool(tx)) for label, tx, op, path, value in entries
            if label.startswith("A") and op in ops]

"""Reading oxenstored access logs, real or simulated, for fidelity checks.

Real Xen's dom0 logs every xenstore access to
``/var/log/xen/xenstored-access.log``; the simulator keeps the same records
(``Store.access_log``, printed by ``format_access_log``). The functions here
turn either into comparable sequences: what the kernels (xen-pciback as
``D0``, the guest's xen-pcifront as ``D<guest domid>``) did in answer to a
toolstack, and what the toolstack itself wrote. Transaction ids and the
kernels' heap-address watch tokens differ from run to run and are
abstracted; everything else is compared as logged.

The one thing not compared as logged is the interleaving of the two
drivers' state writes: xen-pciback and xen-pcifront run independently, so
where neither waits for the other (both probing a backend and frontend
created in one transaction) their order changes from run to run on real Xen
itself. ``state_order_differences`` requires each writer's own sequence of
states to be identical and every causal order between them
(``happens_before``) to hold in both logs; nothing else about the
interleaving.
"""

from __future__ import annotations

import re

# [<date>]  <label[.tx]>  <op>  <path> [<value>]; "w event" is the one op with a space.
_LINE = re.compile(r"^\[(\S+)\]\s+(\S+)\s+(w event|\S+)\s+(\S+)\s?(.*?)\s*$")
_STATE = re.compile(r"(backend|device)/pci/\d+(/\d+)?/state$")
TOOLSTACK_OPS = ("write", "rm", "mkdir", "setperms")
# Who wrote a state, when it was not a kernel: any A<n> connection.
TOOLSTACK = "toolstack"


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
    kernels' backend/frontend state writes, exactly as logged (races
    included; ``state_order_differences`` compares only what is causal)."""
    return [(label, path.rsplit("/", 3)[0].split("/")[0], value) for label, _tx, op, path, value in entries
            if label in kernels and op == "write" and _STATE.search(path)]


def state_writes(entries, kernels=("D0", "D1")):
    """[(who, end, value, n)]: every backend/frontend state write, in log order.

    ``who`` is the kernel's label or ``TOOLSTACK`` (any ``A<n>``), ``end``
    ``'backend'`` or ``'device'``; ``n`` counts from 1 that writer's writes of
    ``value`` to that end, so a write has the same name in every log where the
    writers' own sequences are the same, however they interleave. One guest:
    ``kernels`` are dom0's and that guest's."""
    out = []
    seen = {}
    for label, _tx, op, path, value in entries:
        match = _STATE.search(path) if op == "write" else None
        if match is None:
            continue
        if label in kernels:
            who = label
        elif label.startswith("A"):
            who = TOOLSTACK
        else:
            continue
        key = (who, match.group(1), value)
        seen[key] = seen.get(key, 0) + 1
        out.append(key + (seen[key],))
    return out


def state_sequences(entries, kernels=("D0", "D1")):
    """{(who, end): [value, ...]}: each writer's own sequence of states, which
    no race between the drivers changes."""
    out = {}
    for who, end, value, _n in state_writes(entries, kernels):
        out.setdefault((who, end), []).append(value)
    return out


# The causal orders of the PV PCI protocol between the two ends (Linux 6.1's
# xen-pciback and xen-pcifront, as kernel/pciback.py and kernel/pcifront.py
# simulate them). Each rule: a driver's write of ``value`` after its own
# ``prev`` (None: whatever came before) answers the other end's write of
# ``cause_value`` after that writer's ``cause_prev``, by the kernel of that end
# or by the toolstack. The k-th answer follows the k-th cause.
# Closing (5) and Closed (6) have no rule: they come from several sources
# (xenbus_dev_fatal, the other end closing, device removal), so a write of
# them cannot be tied to one cause; their sequences are still compared.
CAUSAL_RULES = (
    # (end, prev, value, cause writer, cause end, cause prev, cause value, why)
    ("backend", None, "2", TOOLSTACK, "backend", None, "1",
     "pciback probes a backend the toolstack created Initialising"),
    ("device", None, "3", TOOLSTACK, "device", None, "1",
     "pcifront probes a frontend the toolstack created Initialising"),
    ("backend", "3", "4", "kernel", "device", None, "3",
     "pciback connects only once the frontend is Initialised, its ring published"),
    ("device", "3", "4", "kernel", "backend", "3", "4",
     "pcifront connects only once the backend is Connected"),
    ("device", None, "7", TOOLSTACK, "backend", None, "7",
     "pcifront reconfigures only when the toolstack set the backend Reconfiguring"),
    ("backend", None, "8", "kernel", "device", None, "7",
     "pciback acts on the new devices only once the frontend is Reconfiguring"),
    ("device", "7", "4", "kernel", "backend", None, "8",
     "pcifront rescans only once the backend is Reconfigured"),
    ("backend", "8", "4", "kernel", "device", "7", "4",
     "pciback is Connected again only once the frontend is"),
)


def _transitions(sequences, who, end, prev, value):
    """The writes of ``value`` after ``prev`` in ``who``'s own sequence on
    ``end`` (``who`` = 'kernel': whichever kernel wrote that end), named as
    ``state_writes`` names them."""
    out = []
    for (writer, at), values in sorted(sequences.items()):
        if at != end or (writer == TOOLSTACK) != (who == TOOLSTACK):
            continue
        count = 0
        for index, current in enumerate(values):
            if current != value:
                continue
            count += 1
            if prev is None or (index and values[index - 1] == prev):
                out.append((writer, end, value, count))
    return out


def happens_before(entries, kernels=("D0", "D1")):
    """{(earlier, later): why}: the writes (as ``state_writes`` names them)
    that must come in this order in any run with the same sequences.

    Derived from the writers' own sequences alone, not from the log's
    interleaving, so two logs with the same sequences give the same pairs.
    The log should start where both ends are settled (as each step's log
    does): a cause before its start would shift the pairing."""
    sequences = state_sequences(entries, kernels)
    pairs = {}
    for end, prev, value, cause_who, cause_end, cause_prev, cause_value, why in CAUSAL_RULES:
        answers = _transitions(sequences, "kernel", end, prev, value)
        causes = _transitions(sequences, cause_who, cause_end, cause_prev, cause_value)
        for cause, answer in zip(causes, answers):
            pairs[(cause, answer)] = why
    return pairs


def describe_write(write):
    """'D0 backend 4 (#2)': a write as ``state_writes`` names it, for reports."""
    who, end, value, n = write
    return "%s %s %s (#%d)" % (who, end, value, n)


def state_order_differences(want, got, kernels=("D0", "D1"), names=("real", "simulated")):
    """[message]: how the state writes of log ``got`` differ from ``want``'s
    where the protocol fixes them; empty when they agree.

    Each writer's own sequence must be identical, and every causal pair of
    either log (``happens_before``) must hold in both. The order between
    writes no rule connects is not compared: two independent drivers race
    there, on real Xen as much as in a simulation."""
    logs = ((names[0], want), (names[1], got))
    sequences = [state_sequences(entries, kernels) for _name, entries in logs]
    report = []
    for key in sorted(set(sequences[0]) | set(sequences[1])):
        wanted, seen = (s.get(key, []) for s in sequences)
        if wanted != seen:
            report.append("%s %s's own state sequence differs: %s %s, %s %s" % (
                key[0], key[1], names[0], wanted or "none", names[1], seen or "none"))
    pairs = {}
    for _name, entries in logs:
        pairs.update(happens_before(entries, kernels))
    for name, entries in logs:
        position = {write: index for index, write in enumerate(state_writes(entries, kernels))}
        for (earlier, later), why in sorted(pairs.items()):
            # A write missing from one log is reported by its sequence above.
            if earlier in position and later in position and position[later] < position[earlier]:
                report.append("in %s, %s came before %s, which it must follow (%s)" % (
                    name, describe_write(later), describe_write(earlier), why))
    return report


def toolstack_ops(entries, ops=TOOLSTACK_OPS):
    """[(op, path, value, in a transaction)] of the non-kernel connections
    (``A<n>``), in order: what a toolstack wrote."""
    return [(op, path, value, bool(tx)) for label, tx, op, path, value in entries
            if label.startswith("A") and op in ops]

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The undo journal of a running request, kept in xenstore.

Before a request changes anything it writes its whole list of steps under
``/tool/xen-pci/journal/<key>`` (``key``: ``dom-<domid>`` for a guest's
request, ``pool`` for the assignable pool) and marks each step done as it
goes; a finished or fully undone request removes its journal. A request
killed part-way (SIGKILL, a dropped ssh connection) leaves the journal
behind, and the next run of a module finds it while it reads the host,
takes the lock the dead request held, and finishes or rolls back its steps
before doing anything else.

Why xenstore rather than a file beside libxl's userdata: the journal then
lives exactly as long as the state it describes (xenstored forgets both on
a host reboot, a file would survive and describe nothing), it is read in
the same round trips as the rest of the host, and a step's xenstore writes
and its journal mark go to the same daemon in order. The nodes are dom0's
only (``n0``), so guests can neither read nor forge them.

Layout: ``<key>/meta`` (JSON: op, domain, uuid, pid, start time, written
last, so a journal without it was never begun and is dropped) and
``<key>/step-NN`` (JSON: kind, data, status, result). A value longer than
xenstore's payload limit is split into ``step-NN/part-K`` nodes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ansible_collections.xen.pci.plugins.module_utils._errors import XenPciError, XenstoreError

JOURNAL_ROOT = "/tool/xen-pci/journal"
# oxenstored refuses values over 2048 bytes (its quota-maxsize), even from dom0.
_CHUNK = 1800
# "sent": the step's change was made but not confirmed (a device_del the
# guest has not acknowledged yet); a rerun finishes it forward.
STATUSES = ("planned", "done", "sent", "undone", "failed")


def journal_path(key):
    return "%s/%s" % (JOURNAL_ROOT, key)


def domain_key(domid):
    return "dom-%d" % domid


POOL_KEY = "pool"


def _encode(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass
class JournalRecord:
    """A journal as read from xenstore."""

    key: str
    meta: Optional[dict]
    steps: List[dict] = field(default_factory=list)    # in order; each {kind, data, status, result}
    unreadable: List[str] = field(default_factory=list)

    @property
    def path(self):
        return journal_path(self.key)

    @property
    def domid(self):
        return (self.meta or {}).get("domid")

    def summary(self):
        meta = self.meta or {}
        return {"journal": self.path, "op": meta.get("op"), "domain": meta.get("label"), "domid": meta.get("domid"),
                "pid": meta.get("pid"), "started": meta.get("started"),
                "steps": [{"step": s.get("kind"), "status": s.get("status"), "what": s.get("what")} for s in self.steps],
                "unreadable": list(self.unreadable)}


class Journal:
    """The journal of the request being run (one key at a time)."""

    def __init__(self, xs, key):
        self.xs = xs
        self.key = key
        self.path = journal_path(key)
        self._entries = []

    def _writes(self, index, entry):
        node = "%s/step-%02d" % (self.path, index)
        text = _encode(entry)
        if len(text) <= _CHUNK:
            return [self.xs.rm_request(node), self.xs.write_request(node, text)]
        parts = [text[i:i + _CHUNK] for i in range(0, len(text), _CHUNK)]
        out = [self.xs.rm_request(node), self.xs.write_request(node, "parts=%d" % len(parts))]
        out += [self.xs.write_request("%s/part-%d" % (node, i), part) for i, part in enumerate(parts)]
        return out

    def _send(self, requests, deadline, doing):
        for reply in self.xs.pipeline(requests, deadline=deadline):
            if isinstance(reply, XenstoreError) and reply.errno != "ENOENT":
                raise XenPciError("cannot %s journal %s: %s" % (doing, self.path, reply.msg), journal=self.path) from reply

    def begin(self, meta, steps, deadline):
        """Write every step as planned, then the meta node (the commit mark)."""
        self._entries = [{"kind": s.kind, "data": s.data, "status": "planned", "result": {}, "what": s.describe()}
                         for s in steps]
        meta = dict(meta, pid=os.getpid(), started=round(time.time(), 3))
        requests = [self.xs.rm_request(self.path), self.xs.mkdir_request(self.path), self.xs.perms_request(self.path, ["n0"])]
        for index, entry in enumerate(self._entries):
            requests += self._writes(index, entry)
        requests.append(self.xs.write_request(self.path + "/meta", _encode(meta)))
        self._send(requests, deadline, "begin")

    def mark(self, index, status, result, deadline):
        entry = self._entries[index]
        entry["status"] = status
        entry["result"] = result or {}
        self._send(self._writes(index, entry), deadline, "update")

    def finish(self, deadline):
        """Remove the journal (one request). JOURNAL_ROOT itself stays, as
        libxl's /libxl/pci stays: pruning it would need a transaction (another
        request may be beginning its journal there) on every request."""
        self._send([self.xs.rm_request(self.path)], deadline, "remove")


def read_journals(xs, keys, deadline):
    """The journals named ``keys`` (children of JOURNAL_ROOT), two round trips."""
    if not keys:
        return []
    listings = xs.directory_many([journal_path(k) for k in keys], deadline=deadline)
    reads = []
    for key in keys:
        for name in listings.get(journal_path(key)) or []:
            reads.append("%s/%s" % (journal_path(key), name))
    values = xs.read_many(reads, deadline=deadline) if reads else {}
    parts_needed = {p: int(v.split("=", 1)[1]) for p, v in values.items()
                    if v and v.startswith("parts=") and v[6:].isdigit()}
    if parts_needed:
        values.update(xs.read_many(["%s/part-%d" % (p, i) for p, n in parts_needed.items() for i in range(n)],
                                   deadline=deadline))
    out = []
    for key in keys:
        base = journal_path(key)
        names = listings.get(base)
        if names is None:
            continue        # finished meanwhile
        record = JournalRecord(key=key, meta=None)
        raw_meta = values.get(base + "/meta")
        if raw_meta is not None:
            record.meta = _decode(raw_meta, base + "/meta", record)
        steps: Dict[int, dict] = {}
        for name in names:
            if not name.startswith("step-") or not name[5:].isdigit():
                continue
            path = "%s/%s" % (base, name)
            text = values.get(path)
            if path in parts_needed:
                text = "".join(values.get("%s/part-%d" % (path, i)) or "" for i in range(parts_needed[path]))
            entry = _decode(text, path, record) if text is not None else None
            if isinstance(entry, dict):
                steps[int(name[5:])] = entry
        record.steps = [steps[i] for i in sorted(steps)]
        out.append(record)
    return out


def _decode(text, path, record):
    try:
        return json.loads(text)
    except ValueError:
        record.unreadable.append(path)
        return None

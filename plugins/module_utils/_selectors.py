# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Devices named by what they are, resolved to addresses on each host.

A selector entry is a mapping with a ``select`` key, e.g.
``{select: {id: "8086:100e"}, count: 2, permissive: true}``. ``select``
matches on any of: ``id``/``vendor``/``device``, ``subsystem`` (or
``subsystem_vendor``/``subsystem_device``), ``class``, ``serial`` (the PCIe
DSN), ``path`` (``pci0000:00/1c.0/00.0``, see ``_sysfs.physical_path``),
``label`` and ``physfn`` (the virtual functions of the SR-IOV physical
function at that address); every key given must match. ``count``:

* absent: the selector names one device; no match or several is an error;
* N: N of the matches, fewer is an error;
* ``all``: every match, none is an error.

The other keys (permissive, vslot, seize...) are copied to each device
chosen. Choice is stable: devices already in the guest (or pool) first,
then those bound to pciback and free, then the others, each by address;
devices another entry of the request gave by address or chose already are
skipped by ``count: N`` and are an error for the others (both named).
"""

from __future__ import annotations

import re

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf
from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError

SELECT = "select"
COUNT = "count"
MATCH_KEYS = ("id", "vendor", "device", "subsystem", "subsystem_vendor", "subsystem_device", "class", "serial",
              "path", "label", "physfn")
_HEX = re.compile(r"^(?:0[xX])?([0-9a-fA-F]+)$")
_PATH = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}(?:/[0-9a-f]{2}\.[0-7])+$")
_SERIAL = re.compile(r"^[0-9a-f]{16}$")
# Ranks of a candidate (lower is chosen first).
IN_GUEST, FREE_ASSIGNABLE, FREE, ELSEWHERE = range(4)
RANK_NAMES = ("already this guest's", "assignable", "not assignable yet", "attached to another guest")


def is_selector(entry):
    return isinstance(entry, dict) and SELECT in entry


def _hex_id(value, key, bits):
    """A 16-bit id: ``"8086"``, ``"0x8086"`` (hex) or an int (YAML ``0x8086``)."""
    if isinstance(value, bool):
        raise SpecError("%s must be a hex id such as \"8086\", got %r" % (key, value))
    if isinstance(value, int):
        number = value
    else:
        m = _HEX.match(str(value).strip())
        if not m:
            raise SpecError("%s must be a hex id such as \"8086\", got %r" % (key, value))
        number = int(m.group(1), 16)
    if not 0 <= number < 1 << bits:
        raise SpecError("%s %r is out of range (at most %d bits)" % (key, value, bits))
    return number


def _class(value):
    """(value, shift): ``"0x02"`` base class, ``"0x0200"`` class and
    subclass, ``"0x020000"`` with prog-if; an int is class and subclass when
    it fits 16 bits (YAML reads an unquoted ``0x0200`` as 512)."""
    if isinstance(value, bool):
        raise SpecError("class must be a hex class such as \"0x0200\", got %r" % (value,))
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFFFF:
            raise SpecError("class %r is out of range" % (value,))
        return (value, 8) if value <= 0xFFFF else (value, 0)
    m = _HEX.match(str(value).strip())
    if not m or len(m.group(1)) > 6:
        raise SpecError("class must be a hex class such as \"0x0200\" (2, 4 or 6 digits), got %r" % (value,))
    digits = m.group(1)
    return int(digits, 16), {1: 16, 2: 16, 3: 8, 4: 8}.get(len(digits), 0)


def _pair(value, key):
    text = str(value).strip()
    if text.count(":") != 1:
        raise SpecError("%s must be vendor:device in hex, such as \"10de:20b0\", got %r" % (key, value))
    first, second = text.split(":")
    return _hex_id(first, key, 16), _hex_id(second, key, 16)


def _serial(value):
    text = str(value).strip().lower().replace("-", "").replace(":", "")
    if text.startswith("0x"):
        text = text[2:].rjust(16, "0")
    if not _SERIAL.match(text):
        raise SpecError("serial must be the 64-bit serial number as lspci shows it (xx-xx-xx-xx-xx-xx-xx-xx), got %r"
                        % (value,))
    return "-".join(text[i:i + 2] for i in range(0, 16, 2))


class Selector(object):
    """One parsed ``select`` entry."""

    def __init__(self, match, count, options, given):
        self.match = match        # {field: wanted} in sysfs's terms
        self.count = count        # None (exactly one), an int, or "all"
        self.options = options    # the spec keys applied to each device chosen
        self.given = given        # the entry as written (for results)

    @property
    def fields(self):
        return set(self.match)

    def matches(self, ident):
        for key, want in self.match.items():
            have = ident.get(key)
            if key == "class":
                value, shift = want
                if have is None or have >> shift != value:
                    return False
            elif have != want:
                return False
        return True

    def describe(self):
        shown = dict(self.given[SELECT])
        return "select %s" % ", ".join("%s=%s" % (k, shown[k]) for k in sorted(shown))


def parse_selector(entry, spec_keys):
    """A Selector from an entry, or SpecError saying what is wrong.
    ``spec_keys``: the keys the module's entries take besides ``bdf``
    (a ``name`` there is one device's name, so it needs a single device)."""
    select = entry.get(SELECT)
    if not isinstance(select, dict) or not select:
        raise SpecError("select must be a mapping of %s, got %r" % ("/".join(MATCH_KEYS), select))
    unknown = sorted(str(k) for k in select if k not in MATCH_KEYS)
    if unknown:
        raise SpecError("select: unknown key(s) %s (known: %s)" % (", ".join(unknown), ", ".join(MATCH_KEYS)))
    match = {}
    for key, value in select.items():
        if value is None:
            continue
        if key == "id":
            match["vendor"], match["device"] = _pair(value, "id")
        elif key == "subsystem":
            match["subsystem_vendor"], match["subsystem_device"] = _pair(value, "subsystem")
        elif key in ("vendor", "device", "subsystem_vendor", "subsystem_device"):
            number = _hex_id(value, key, 16)
            if match.get(key, number) != number:
                raise SpecError("select: %s %r disagrees with the id given" % (key, value))
            match[key] = number
        elif key == "class":
            match["class"] = _class(value)
        elif key == "serial":
            match["serial"] = _serial(value)
        elif key == "path":
            text = str(value).strip().lower()
            if not _PATH.match(text):
                raise SpecError("path must be the root bus then slot.function per hop, such as "
                                "\"pci0000:00/1c.0/00.0\", got %r" % (value,))
            match["path"] = text
        elif key == "physfn":
            try:
                match["physfn"] = str(Bdf.parse(value))
            except SpecError as exc:
                raise SpecError("physfn must be the PCI address of a physical function, such as \"0000:03:00.0\": %s"
                                % exc.msg) from exc
        elif key == "label":
            if not isinstance(value, str) or not value.strip():
                raise SpecError("label must be a non-empty string, got %r" % (value,))
            match["label"] = value.strip()
    if not match:
        raise SpecError("select names no property to match (all values are null)")
    count = entry.get(COUNT)
    if count is not None and count != "all":
        if isinstance(count, str) and count.isdigit():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SpecError("count must be a positive number or \"all\", got %r" % (entry.get(COUNT),))
    options = {k: v for k, v in entry.items() if k not in (SELECT, COUNT)}
    if "bdf" in options or ("name" in options and "name" not in spec_keys):
        raise SpecError("a selector chooses the devices itself: drop %s (or the select)"
                        % ("bdf" if "bdf" in options else "name"))
    unknown = sorted(str(k) for k in options if k not in spec_keys)
    if unknown:
        raise SpecError("unknown key(s) %s (known: select, count, %s)" % (", ".join(unknown), ", ".join(spec_keys)))
    for key in ("vslot", "name"):
        if count != 1 and count is not None and options.get(key) is not None:
            raise SpecError("%s belongs to one device: it cannot be given to %s devices" % (key, count))
    return Selector(match, count, options, dict(entry))


class Inventory(object):
    """The host's devices with the fields the selectors need, read once.
    ``only(bdf)``: which devices are candidates at all (default: every one)."""

    def __init__(self, sysfs, fields, only=None):
        self.bdfs = [bdf for bdf in sysfs.devices() if only is None or only(bdf)]
        self.ids = {bdf: sysfs.identity(bdf, fields) for bdf in self.bdfs}
        self.drivers = sysfs.drivers(self.bdfs)

    def matching(self, selector):
        return [bdf for bdf in self.bdfs if selector.matches(self.ids[bdf])]


def _rank(bdf, owner, inventory, holder_of):
    holder = holder_of(bdf)
    if holder is not None and owner is not None and holder == owner:
        return IN_GUEST
    if holder is not None:
        return ELSEWHERE
    return FREE_ASSIGNABLE if inventory.drivers.get(bdf) == "pciback" else FREE


def _candidates(found, owner, inventory, holder_of, claimed):
    """Each match with its rank and who claimed it, in the order of choice."""
    out = [(_rank(bdf, owner, inventory, holder_of), bdf, claimed.get(bdf)) for bdf in found]
    return sorted(out, key=lambda c: (c[0], Bdf.parse(c[1]).sbdf))


def _listed(cands):
    return ", ".join("%s (%s%s)" % (bdf, RANK_NAMES[rank], "; taken by %s" % by if by else "")
                     for rank, bdf, by in cands) or "none"


def choose(selector, where, owner, inventory, holder_of, claimed, none_is_empty=False):
    """The addresses ``selector`` stands for; SpecError listing the candidates
    when there are too few (or, without a count, more than one).
    ``none_is_empty``: a ``count: all`` that matches nothing chooses nothing."""
    cands = _candidates(inventory.matching(selector), owner, inventory, holder_of, claimed)
    what = "%s: %s" % (where, selector.describe())
    if selector.count is None:
        if len(cands) != 1:
            raise SpecError("%s matches %d devices, not exactly one (give count, or select more precisely); "
                            "candidates: %s" % (what, len(cands), _listed(cands)), candidates=[c[1] for c in cands])
        chosen = cands
    elif selector.count == "all":
        if not cands and not none_is_empty:
            raise SpecError("%s matches no device on this host" % what, candidates=[])
        chosen = cands
    else:
        usable = [c for c in cands if c[2] is None and c[0] != ELSEWHERE]
        if len(usable) < selector.count:
            raise SpecError("%s asks for %d devices, %d are free to take; candidates: %s" % (
                what, selector.count, len(usable), _listed(cands)), candidates=[c[1] for c in cands])
        chosen = usable[:selector.count]
    for _rank_of, bdf, by in chosen:
        if by is not None:
            raise SpecError("%s chooses %s, which %s also gives" % (what, bdf, by), device=bdf, candidates=[c[1] for c in cands])
    return [bdf for _rank_of, bdf, _by in chosen]


def selector_fields(selectors):
    out = set()
    for sel in selectors:
        out |= sel.fields
    return out


def expand_selected(specs, selected):
    """``specs`` with each selector entry replaced by the devices the module
    chose for it (``selected``: a result's [{entry, bdfs}] for this list),
    its other keys kept: what a guest's config file gets, so that it names
    the devices the hotplug attached."""
    chosen = {item["entry"]: item["bdfs"] for item in selected or []}
    out = []
    for index, spec in enumerate(specs or []):
        if not is_selector(spec):
            out.append(spec)
            continue
        if index not in chosen:
            raise SpecError("entry #%d is a selector that the result does not resolve" % index)
        options = {k: v for k, v in spec.items() if k not in (SELECT, COUNT)}
        out.extend(dict(options, bdf=bdf) for bdf in chosen[index])
    return out

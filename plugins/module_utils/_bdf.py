# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI addresses and xl-pci-configuration(5) device specs.

``Bdf`` is one host PCI function. ``PciSpec`` is one entry of a domain's
``pci = [...]`` list or of ``xl pci-attach``: parsed, validated, formatted
canonically, and turned into the per-function values the toolstack writes
(``opts-N``, ``vdevfn-N``). ``PciFunction`` is one function as it is (or will
be) attached: what a backend index describes.

Grammar (xl-pci-configuration(5), libxlu_pci.c)::

    spec  := bdf ['@' vslot] (',' key '=' value)* [',']
           | key '=' value (',' key '=' value)* [',']
    bdf   := [DDDD ':'] BB ':' SS '.' (F | '*')        all hex
    keys  := bdf vslot permissive msitranslate seize power_mgmt rdm_policy name

Where we are stricter than libxlu, on purpose:

- libxlu reads the flags with atoi(), so ``permissive=yes`` silently means 0;
  we accept only ``0`` and ``1``.
- libxlu lets a key appear twice (the last one wins) and ignores junk after
  ``vslot=`` and ``bdf=`` values; we reject both.
- libxlu's sscanf() also lets through blanks, signs and ``0x`` inside a BDF;
  we accept plain hex digits only (``0x`` is allowed on a vslot, as libxlu).
- ``rdm_policy=invalid`` is an enum value libxlu accepts (libxl then turns it
  into strict); we reject it. strict/relaxed are matched case-insensitively,
  as libxl_rdm_reserve_policy_from_string() does.
- Empty values: libxlu turns ``permissive=`` into 0 and rejects an empty
  vslot or rdm_policy; we reject every empty value.

What we accept like libxlu: any number of hex digits within the limits
(``0000:00:01.00``, pciback's ``vdev-N`` form, is a valid address), one
trailing comma, case-insensitive hex, a value containing ``=``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError

DOMAIN_MAX = 0xFFFF
BUS_MAX = 0xFF
SLOT_MAX = 0x1F
FUNC_MAX = 7
VSLOT_MAX = 0x1F
# Longest device name taken: libxl sets none, but it lives in a xenstore
# node (4096 bytes with its path) and in every message that names the device.
NAME_MAX = 128

RDM_POLICIES = ("strict", "relaxed")
FLAG_KEYS = ("permissive", "msitranslate", "seize", "power_mgmt")
# Canonical order of the keys in a formatted spec (the man page's order).
SPEC_KEYS = ("bdf", "vslot") + FLAG_KEYS + ("rdm_policy", "name")
# Defaults libxl applies to an `xl pci-attach` spec (libxl__device_pci_setdefault,
# libxl_device_pci_init); a domain config's pci_* globals may override them.
LIBXL_DEFAULTS = {"permissive": False, "msitranslate": False, "seize": False,
                  "power_mgmt": False, "rdm_policy": "strict"}

_HEX = re.compile(r"[0-9a-fA-F]+\Z")
_VSLOT = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)\Z")
_QMP_ID = re.compile(r"pci-pt-([0-9a-f]{2})_([0-9a-f]{2})\.([0-7])\Z")
_XS_KEY = re.compile(r"([0-9a-fA-F]{4})-([0-9a-fA-F]{2})-([0-9a-fA-F]{2})-([0-7])\Z")
_NAME_BAD = re.compile(r"[\s,]")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

_COMPONENTS = (("domain", DOMAIN_MAX), ("bus", BUS_MAX), ("slot", SLOT_MAX))
_BDF_SHAPE = "expected [DDDD:]BB:SS.F in hex"


def _short(value, limit=160):
    """Input quoted in a message, cut to a readable length."""
    return value if not isinstance(value, str) or len(value) <= limit else value[:limit] + "...(%d characters)" % len(value)


def _fail(what, text, token, pos, reason, **details):
    """Build a SpecError naming the input, the token and its column."""
    msg = "invalid %s %r: %r at column %d: %s" % (what, _short(text), _short(token, 40), pos + 1, reason)
    return SpecError(msg, spec=_short(text), token=_short(token, 40), position=pos, **details)


def _parse_address(what, text, token, pos, wildcard):
    """Parse ``token`` (found at ``pos`` of ``text``) as [DDDD:]BB:SS.F.

    Returns (domain, bus, slot, func, all_functions); func is 0 for ``*``.
    """
    if token == "":
        raise _fail(what, text, token, pos, "missing PCI address")
    head, dot, func_s = token.rpartition(".")
    if not dot:
        raise _fail(what, text, token, pos, "no function in PCI address (%s)" % _BDF_SHAPE)
    parts = head.split(":")
    if len(parts) == 2:
        parts.insert(0, None)
    elif len(parts) != 3:
        raise _fail(what, text, token, pos, "wrong number of ':' in PCI address (%s)" % _BDF_SHAPE)
    values = []
    offset = pos
    for (label, limit), part in zip(_COMPONENTS, parts):
        if part is None:
            values.append(0)
            continue
        if not _HEX.match(part):
            raise _fail(what, text, part, offset, "%s is not a hex number" % label)
        value = int(part, 16)
        if value > limit:
            raise _fail(what, text, part, offset, "%s is out of range (max %x)" % (label, limit))
        values.append(value)
        offset += len(part) + 1
    if func_s == "*" and wildcard:
        return values[0], values[1], values[2], 0, True
    if not _HEX.match(func_s):
        extra = " (or * for all functions)" if wildcard else ""
        raise _fail(what, text, func_s, offset, "function is not a hex digit%s" % extra)
    func = int(func_s, 16)
    if func > FUNC_MAX:
        raise _fail(what, text, func_s, offset, "function is out of range (max 7)")
    return values[0], values[1], values[2], func, False


@dataclass(frozen=True, order=True)
class Bdf:
    """One PCI function of the host: segment (domain), bus, slot, function."""

    domain: int
    bus: int
    slot: int
    func: int

    def __post_init__(self):
        for label, value, limit in (("domain", self.domain, DOMAIN_MAX), ("bus", self.bus, BUS_MAX),
                                    ("slot", self.slot, SLOT_MAX), ("func", self.func, FUNC_MAX)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
                raise SpecError("invalid PCI address: %s %r is not an integer in 0..%#x" % (label, value, limit),
                                token=repr(value), component=label)

    @classmethod
    def parse(cls, text):
        """Parse ``[DDDD:]BB:SS.F`` (hex); the function may have several digits."""
        if isinstance(text, Bdf):
            return text
        if not isinstance(text, str):
            raise SpecError("invalid PCI address %r: expected a string, got %s" % (text, type(text).__name__),
                            spec=text, token=repr(text), position=0)
        domain, bus, slot, func, _all = _parse_address("PCI address", text, text, 0, False)
        return cls(domain, bus, slot, func)

    @classmethod
    def from_xs_key(cls, text):
        """Parse the /libxl/pci path component ``DDDD-BB-SS-F``."""
        match = _XS_KEY.match(text) if isinstance(text, str) else None
        if not match:
            raise _fail("libxl PCI key", text, text, 0, "expected DDDD-BB-SS-F")
        domain, bus, slot, func = (int(g, 16) for g in match.groups())
        if slot > SLOT_MAX:
            raise _fail("libxl PCI key", text, match.group(3), 8, "slot is out of range (max 1f)")
        return cls(domain, bus, slot, func)

    @classmethod
    def from_qmp_id(cls, text):
        """Inverse of ``qmp_id`` (``pci-pt-BB_DD.F``; QEMU's id has no segment: 0)."""
        match = _QMP_ID.match(text) if isinstance(text, str) else None
        if not match:
            raise _fail("QEMU device id", text, text, 0, "expected pci-pt-BB_DD.F")
        bus, slot, func = (int(g, 16) for g in match.groups())
        if slot > SLOT_MAX:
            raise _fail("QEMU device id", text, match.group(2), 10, "slot is out of range (max 1f)")
        return cls(0, bus, slot, func)

    @classmethod
    def from_sbdf(cls, sbdf):
        """Inverse of ``sbdf``."""
        if isinstance(sbdf, bool) or not isinstance(sbdf, int) or not 0 <= sbdf <= 0xFFFFFFFF:
            raise SpecError("invalid SBDF %r: expected an integer in 0..0xffffffff" % (sbdf,), token=repr(sbdf))
        return cls(sbdf >> 16, (sbdf >> 8) & 0xFF, (sbdf >> 3) & 0x1F, sbdf & 7)

    def __str__(self):
        return "%04x:%02x:%02x.%01x" % (self.domain, self.bus, self.slot, self.func)

    @property
    def xs_key(self):
        """Path component under /libxl/pci (libxl's PCI_BDF_XSPATH)."""
        return "%04x-%02x-%02x-%01x" % (self.domain, self.bus, self.slot, self.func)

    @property
    def qmp_id(self):
        """QEMU device id libxl gives a passed-through device (no segment)."""
        return "pci-pt-%02x_%02x.%01x" % (self.bus, self.slot, self.func)

    @property
    def sbdf(self):
        """Machine SBDF for hypercalls (libxl's pci_encode_bdf)."""
        return (self.domain << 16) | (self.bus << 8) | ((self.slot & 0x1F) << 3) | (self.func & 7)

    @property
    def devfn(self):
        return (self.slot << 3) | self.func

    @property
    def slot_address(self):
        """``DDDD:BB:SS`` without the function: what ``*`` specs name."""
        return "%04x:%02x:%02x" % (self.domain, self.bus, self.slot)

    def same_slot(self, other):
        return (self.domain, self.bus, self.slot) == (other.domain, other.bus, other.slot)


def _parse_flag(text, key, value, pos):
    if value in ("0", "1"):
        return value == "1"
    reason = ("empty value for %s (use 0 or 1)" % key) if value == "" else \
        "%s must be 0 or 1 (xl reads it with atoi(), so other spellings are silently misread)" % key
    raise _fail("PCI spec", text, value, pos, reason)


def _parse_vslot(text, value, pos):
    match = _VSLOT.match(value)
    if not match:
        reason = "empty vslot" if value == "" else "vslot is not a hex number"
        raise _fail("PCI spec", text, value, pos, reason)
    vslot = int(match.group(1), 16)
    if vslot > VSLOT_MAX:
        raise _fail("PCI spec", text, value, pos, "vslot is out of range (max 1f)")
    return vslot


def _parse_rdm(text, value, pos):
    if value.lower() in RDM_POLICIES:
        return value.lower()
    raise _fail("PCI spec", text, value, pos, "rdm_policy must be strict or relaxed")


def _check_name(text, value, pos):
    if value == "":
        raise _fail("PCI spec", text, value, pos, "empty name")
    if len(value) > NAME_MAX:
        raise _fail("PCI spec", text, value, pos, "name is longer than %d characters (%d)" % (NAME_MAX, len(value)))
    if _NAME_BAD.search(value) or not value.isprintable():
        raise _fail("PCI spec", text, value, pos, "name must not contain blanks, commas or control characters")
    return value


def _dict_flag(key, value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise SpecError("invalid PCI spec: %s must be a boolean, got %r" % (key, value), token=repr(value), key=key)


def _dict_vslot(value):
    if isinstance(value, bool):
        raise SpecError("invalid PCI spec: vslot must be an integer or a hex string, got %r" % (value,),
                        token=repr(value), key="vslot")
    if isinstance(value, int):
        if not 0 <= value <= VSLOT_MAX:
            raise SpecError("invalid PCI spec: vslot %r is out of range (0..0x1f)" % (value,), token=repr(value), key="vslot")
        return value
    if isinstance(value, str):
        return _parse_vslot(value, value.strip(), 0)
    raise SpecError("invalid PCI spec: vslot must be an integer or a hex string, got %r" % (value,),
                    token=repr(value), key="vslot")


@dataclass(frozen=True)
class PciSpec:
    """One xl-pci-configuration(5) spec.

    Exactly one of ``bdf`` and ``name``. With ``all_functions`` (``F`` = ``*``)
    ``bdf.func`` is 0, as in libxl. Options left as ``None`` were not given:
    they take the domain config's ``pci_*`` globals, else libxl's defaults
    (see ``with_defaults``). ``vslot`` 0 is kept as given but libxl treats a
    zero virtual devfn as "no vslot" (nothing written, slot chosen for you).
    """

    bdf: Optional[Bdf] = None
    name: Optional[str] = None
    all_functions: bool = False
    vslot: Optional[int] = None
    permissive: Optional[bool] = None
    msitranslate: Optional[bool] = None
    seize: Optional[bool] = None
    power_mgmt: Optional[bool] = None
    rdm_policy: Optional[str] = None

    def __post_init__(self):
        if (self.bdf is None) == (self.name is None):
            raise SpecError("invalid PCI spec: exactly one of bdf and name must be given")
        if self.bdf is not None and not isinstance(self.bdf, Bdf):
            raise SpecError("invalid PCI spec: bdf must be a Bdf, got %r" % (self.bdf,), token=repr(self.bdf))
        if self.all_functions and (self.bdf is None or self.bdf.func != 0):
            raise SpecError("invalid PCI spec: all_functions needs a bdf with function 0")
        if self.name is not None:
            if not isinstance(self.name, str):
                raise SpecError("invalid PCI spec: name must be a string, got %r" % (self.name,), token=repr(self.name))
            _check_name(self.name, self.name, 0)
        if self.vslot is not None and (isinstance(self.vslot, bool) or not isinstance(self.vslot, int)
                                       or not 0 <= self.vslot <= VSLOT_MAX):
            raise SpecError("invalid PCI spec: vslot %r is not an integer in 0..0x1f" % (self.vslot,), token=repr(self.vslot))
        for key in FLAG_KEYS:
            value = getattr(self, key)
            if value is not None and not isinstance(value, bool):
                raise SpecError("invalid PCI spec: %s must be a bool, got %r" % (key, value), token=repr(value))
        if self.rdm_policy is not None and self.rdm_policy not in RDM_POLICIES:
            raise SpecError("invalid PCI spec: rdm_policy must be strict or relaxed, got %r" % (self.rdm_policy,),
                            token=repr(self.rdm_policy))

    # -- parsing -----------------------------------------------------------

    @classmethod
    def parse(cls, text):
        """Parse a spec string; every error names the token and its column."""
        if not isinstance(text, str):
            raise SpecError("invalid PCI spec %r: expected a string, got %s" % (text, type(text).__name__),
                            spec=text, token=repr(text), position=0)
        if text == "":
            raise _fail("PCI spec", text, text, 0, "empty spec")
        items = []  # (offset, item)
        offset = 0
        for item in text.split(","):
            items.append((offset, item))
            offset += len(item) + 1
        if len(items) > 1 and items[-1][1] == "":
            items.pop()  # libxlu accepts one trailing comma
        fields: Dict[str, Any] = {}
        seen: Dict[str, int] = {}

        def claim(key, pos, token):
            if key in seen:
                raise _fail("PCI spec", text, token, pos, "duplicate %s (first given at column %d)" % (key, seen[key] + 1))
            seen[key] = pos

        first_off, first = items[0]
        if "=" not in first:
            # Positional <bdf>[@<vslot>]
            addr, at, vslot_s = first.partition("@")
            claim("bdf", first_off, addr)
            fields["bdf"] = _parse_address("PCI spec", text, addr, first_off, True)
            if at:
                claim("vslot", first_off + len(addr) + 1, vslot_s)
                fields["vslot"] = _parse_vslot(text, vslot_s, first_off + len(addr) + 1)
            items = items[1:]
        for pos, item in items:
            if item == "":
                raise _fail("PCI spec", text, item, pos, "empty item")
            key, eq, value = item.partition("=")
            if not eq:
                raise _fail("PCI spec", text, item, pos, "expected key=value")
            vpos = pos + len(key) + 1
            if key not in SPEC_KEYS:
                raise _fail("PCI spec", text, key, pos, "unknown key (known: %s)" % ", ".join(SPEC_KEYS))
            claim(key, pos, key)
            if key == "bdf":
                fields["bdf"] = _parse_address("PCI spec", text, value, vpos, True)
            elif key == "vslot":
                fields["vslot"] = _parse_vslot(text, value, vpos)
            elif key in FLAG_KEYS:
                fields[key] = _parse_flag(text, key, value, vpos)
            elif key == "rdm_policy":
                fields[key] = _parse_rdm(text, value, vpos)
            else:
                fields["name"] = _check_name(text, value, vpos)
        if "bdf" in fields and "name" in fields:
            raise _fail("PCI spec", text, "name", seen["name"], "bdf and name are exclusive; give one, not both")
        if "bdf" not in fields and "name" not in fields:
            raise _fail("PCI spec", text, text, 0, "no bdf and no name (one of them is required)")
        if "bdf" in fields:
            domain, bus, slot, func, all_f = fields.pop("bdf")
            fields["bdf"] = Bdf(domain, bus, slot, func)
            fields["all_functions"] = all_f
        return cls(**fields)

    @classmethod
    def from_dict(cls, data):
        """Build from the playbook form, e.g. ``{"bdf": "03:00.0", "vslot": 4}``.

        ``vslot`` as an int is taken as is; as a string it is hex, like xl
        (``"10"`` is slot 0x10). Keys whose value is None count as absent.
        """
        if not isinstance(data, Mapping):
            raise SpecError("invalid PCI spec %r: expected a string or a mapping" % (data,), token=repr(data))
        unknown = sorted(str(k) for k in data if k not in SPEC_KEYS)
        if unknown:
            raise SpecError("invalid PCI spec %r: unknown key(s) %s (known: %s)"
                            % (dict(data), ", ".join(unknown), ", ".join(SPEC_KEYS)), token=unknown[0], unknown=unknown)
        given = {k: v for k, v in data.items() if v is not None}
        fields: Dict[str, Any] = {}
        if "bdf" in given and "name" in given:
            raise SpecError("invalid PCI spec %r: bdf and name are exclusive; give one, not both" % (dict(data),), token="name")
        if "bdf" not in given and "name" not in given:
            raise SpecError("invalid PCI spec %r: no bdf and no name" % (dict(data),), token="")
        if "bdf" in given:
            bdf = given["bdf"]
            if isinstance(bdf, Bdf):
                fields["bdf"] = bdf
            elif isinstance(bdf, str):
                domain, bus, slot, func, all_f = _parse_address("PCI address", bdf, bdf, 0, True)
                fields["bdf"] = Bdf(domain, bus, slot, func)
                fields["all_functions"] = all_f
            else:
                raise SpecError("invalid PCI spec: bdf must be a string, got %r" % (bdf,), token=repr(bdf), key="bdf")
        if "name" in given:
            name = given["name"]
            if not isinstance(name, str):
                raise SpecError("invalid PCI spec: name must be a string, got %r" % (name,), token=repr(name), key="name")
            fields["name"] = str(_check_name(name, name, 0))
        if "vslot" in given:
            fields["vslot"] = _dict_vslot(given["vslot"])
        for key in FLAG_KEYS:
            if key in given:
                fields[key] = _dict_flag(key, given[key])
        if "rdm_policy" in given:
            policy = given["rdm_policy"]
            if not isinstance(policy, str):
                raise SpecError("invalid PCI spec: rdm_policy must be strict or relaxed, got %r" % (policy,),
                                token=repr(policy), key="rdm_policy")
            fields["rdm_policy"] = _parse_rdm(policy, policy, 0)
        return cls(**fields)

    @classmethod
    def coerce(cls, value):
        """A PciSpec from a spec string, a mapping, or a PciSpec."""
        if isinstance(value, PciSpec):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls.from_dict(value)

    # -- formatting --------------------------------------------------------

    @property
    def address(self):
        """The bdf as written in a spec (``0000:03:00.*`` for all functions), or None."""
        if self.bdf is None:
            return None
        if self.all_functions:
            return self.bdf.slot_address + ".*"
        return str(self.bdf)

    def format(self, include_defaults=False):
        """Canonical spec string: positional bdf, 2-digit vslot, options in
        the man page's order, only the options that were given (or all of
        them, with libxl's defaults, with ``include_defaults``)."""
        spec = self.with_defaults() if include_defaults else self
        if spec.bdf is not None:
            out = [spec.address + ("@%02x" % spec.vslot if spec.vslot is not None else "")]
        else:
            out = ["name=%s" % spec.name]
            if spec.vslot is not None:
                out.append("vslot=%02x" % spec.vslot)
        for key in FLAG_KEYS:
            value = getattr(spec, key)
            if value is not None:
                out.append("%s=%d" % (key, int(value)))
        if spec.rdm_policy is not None:
            out.append("rdm_policy=%s" % spec.rdm_policy)
        return ",".join(out)

    def __str__(self):
        return self.format()

    def with_defaults(self, **defaults):
        """Fill the options not given, from ``defaults`` (a domain config's
        globals: permissive, msitranslate, seize, power_mgmt, rdm_policy),
        else libxl's defaults."""
        unknown = sorted(set(defaults) - set(LIBXL_DEFAULTS))
        if unknown:
            raise SpecError("unknown PCI option default(s): %s" % ", ".join(unknown), token=unknown[0])
        values = dict(LIBXL_DEFAULTS)
        values.update({k: v for k, v in defaults.items() if v is not None})
        return replace(self, **{k: v for k, v in values.items() if getattr(self, k) is None})

    def to_dict(self, resolve=True):
        """The playbook form. With ``resolve`` every key is present and the
        options carry libxl's defaults; without, only what was given."""
        spec = self.with_defaults() if resolve else self
        out: Dict[str, Any] = {"bdf": spec.address, "name": spec.name, "vslot": spec.vslot}
        for key in FLAG_KEYS + ("rdm_policy",):
            out[key] = getattr(spec, key)
        if not resolve:
            out = {k: v for k, v in out.items() if v is not None}
        return out

    # -- what the toolstack writes -------------------------------------------

    def expand(self, present=None, bdf=None, require_vslot=True):
        """The functions this spec attaches, as libxl numbers them.

        ``bdf``: the address a ``name`` spec resolved to (/libxl/pci/*/name).
        ``present``: the host's PCI functions (Bdf or strings), needed for ``*``.

        libxl (device_pci_add_stubdom_done, do_pci_remove):

        - one function: the guest sees it as function 0 of the vslot, whatever
          its host function number (vdevfn = vslot << 3);
        - ``*``: every function present on the host keeps its number
          (vdevfn = vslot << 3 | func), so a multi-function device stays
          multi-function in the guest; functions go from 7 down to 0 so that
          function 0, which makes a guest scan the slot, comes last. libxl
          requires a non-zero vslot to attach a ``*`` spec ("Must specify a
          v-slot for multi-function devices"), not to detach one
          (``require_vslot=False``). libxl's add path returns after the first
          (highest) function, a bug we do not copy: all are returned.
        """
        options = self.with_defaults()
        addr = self.bdf
        if addr is None:
            if bdf is None:
                raise SpecError("PCI spec %r: the name %r must be resolved to an address first" % (self.format(), self.name),
                                token=self.name)
            addr = Bdf.parse(bdf)
        common = {"permissive": options.permissive, "msitranslate": options.msitranslate, "seize": options.seize,
                  "power_mgmt": options.power_mgmt, "rdm_policy": options.rdm_policy, "name": self.name}
        base = (self.vslot or 0) << 3
        if not self.all_functions:
            return [PciFunction(bdf=addr, vdevfn=base, **common)]
        if require_vslot and not self.vslot:
            raise SpecError("PCI spec %r: a multi-function spec (*) needs a non-zero vslot to be attached "
                            "(libxl: Must specify a v-slot for multi-function devices)" % self.format(),
                            token=self.address)
        funcs = set()
        for item in present or ():
            host = Bdf.parse(item)
            if host.same_slot(addr):
                funcs.add(host.func)
        if not funcs:
            raise SpecError("PCI spec %r: no function of %s is present on the host" % (self.format(), addr.slot_address),
                            token=self.address)
        return [PciFunction(bdf=replace(addr, func=f), vdevfn=base | f, **common) for f in sorted(funcs, reverse=True)]


@dataclass(frozen=True)
class PciFunction:
    """One host function as a backend index describes it (options resolved).

    ``vdevfn`` 0 means "no virtual slot requested" (libxl writes no
    ``vdevfn-N``); ``seize`` is not recorded in xenstore and reads back False.
    """

    bdf: Bdf
    vdevfn: int = 0
    permissive: bool = False
    msitranslate: bool = False
    seize: bool = False
    power_mgmt: bool = False
    rdm_policy: str = "strict"
    name: Optional[str] = None

    def __post_init__(self):
        if not isinstance(self.bdf, Bdf):
            raise SpecError("invalid PCI function: bdf must be a Bdf, got %r" % (self.bdf,), token=repr(self.bdf))
        if isinstance(self.vdevfn, bool) or not isinstance(self.vdevfn, int) or not 0 <= self.vdevfn <= 0xFF:
            raise SpecError("invalid PCI function: vdevfn %r is not in 0..0xff" % (self.vdevfn,), token=repr(self.vdevfn))
        if self.rdm_policy not in RDM_POLICIES:
            raise SpecError("invalid PCI function: rdm_policy %r" % (self.rdm_policy,), token=repr(self.rdm_policy))

    @property
    def vslot(self):
        return (self.vdevfn >> 3) if self.vdevfn else None

    @property
    def vfunc(self):
        return self.vdevfn & 7

    @property
    def opts(self):
        """The backend ``opts-N`` value, as libxl_create_pci_backend_device writes it."""
        return format_opts(self.msitranslate, self.power_mgmt, self.permissive, self.rdm_policy)

    @property
    def vdevfn_value(self):
        """The backend ``vdevfn-N`` value (``%x``), or None when libxl writes none."""
        return format_vdevfn(self.vdevfn)

    @property
    def qmp_addr(self):
        """``addr`` of QMP device_add (``%x.%x`` slot.func), or None for any slot."""
        return ("%x.%x" % (self.vdevfn >> 3, self.vdevfn & 7)) if self.vdevfn else None

    def to_spec(self):
        """A spec string that re-attaches this function (the virtual function
        number is lost unless 0: the grammar cannot say it)."""
        return PciSpec(bdf=self.bdf, vslot=self.vslot, permissive=self.permissive, msitranslate=self.msitranslate,
                       seize=self.seize, power_mgmt=self.power_mgmt, rdm_policy=self.rdm_policy)

    def to_dict(self):
        return {"bdf": str(self.bdf), "vdevfn": self.vdevfn, "vslot": self.vslot, "vfunc": self.vfunc if self.vdevfn else None,
                "permissive": self.permissive, "msitranslate": self.msitranslate, "seize": self.seize,
                "power_mgmt": self.power_mgmt, "rdm_policy": self.rdm_policy, "name": self.name}

    @classmethod
    def from_dict(cls, data):
        """Inverse of ``to_dict`` (the journal's form of a function)."""
        return cls(bdf=Bdf.parse(data["bdf"]), vdevfn=data.get("vdevfn") or 0,
                   permissive=bool(data.get("permissive")), msitranslate=bool(data.get("msitranslate")),
                   seize=bool(data.get("seize")), power_mgmt=bool(data.get("power_mgmt")),
                   rdm_policy=data.get("rdm_policy") or "strict", name=data.get("name"))

    @classmethod
    def from_backend(cls, dev, opts=None, vdevfn=None, name=None):
        """From a backend index: ``dev-N``, ``opts-N``, ``vdevfn-N``, ``name-N`` (absent keys as None)."""
        options = parse_opts(opts) if opts is not None else dict(LIBXL_DEFAULTS)
        options.pop("seize", None)
        return cls(bdf=Bdf.parse(dev), vdevfn=parse_vdevfn(vdevfn) if vdevfn is not None else 0,
                   name=name if name else None, **options)


def format_opts(msitranslate=False, power_mgmt=False, permissive=False, rdm_policy="strict"):
    """``opts-N``: ``msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict``."""
    if rdm_policy not in RDM_POLICIES:
        raise SpecError("invalid rdm_policy %r: must be strict or relaxed" % (rdm_policy,), token=repr(rdm_policy))
    return "msitranslate=%d,power_mgmt=%d,permissive=%d,rdm_policy=%s" % (
        int(bool(msitranslate)), int(bool(power_mgmt)), int(bool(permissive)), rdm_policy)


def parse_opts(text):
    """Parse ``opts-N`` back into {msitranslate, power_mgmt, permissive, rdm_policy}.

    Like libxl's reader (libxl__device_pci_from_xs_be): blanks before a key
    are skipped, unknown keys are ignored (other toolstack versions), a
    missing key keeps its default (Xen < 4.6 wrote only msitranslate and
    power_mgmt). Unlike it, a value that is not a number, or an rdm_policy
    libxl does not know, is an error rather than a silent 0.
    """
    if not isinstance(text, str):
        raise SpecError("invalid opts value %r: expected a string" % (text,), spec=text, token=repr(text), position=0)
    out: Dict[str, Any] = {k: LIBXL_DEFAULTS[k] for k in ("msitranslate", "power_mgmt", "permissive", "rdm_policy")}
    offset = 0
    for item in text.split(","):
        pos = offset
        offset += len(item) + 1
        stripped = item.lstrip(" ")
        pos += len(item) - len(stripped)
        if stripped == "":
            raise _fail("opts value", text, item, pos, "empty item")
        key, eq, value = stripped.partition("=")
        if not eq:
            raise _fail("opts value", text, stripped, pos, "expected key=value")
        vpos = pos + len(key) + 1
        if key == "rdm_policy":
            if value.lower() not in RDM_POLICIES:
                raise _fail("opts value", text, value, vpos, "rdm_policy must be strict or relaxed")
            out[key] = value.lower()
        elif key in ("msitranslate", "power_mgmt", "permissive"):
            if not re.match(r"-?[0-9]+\Z", value):
                raise _fail("opts value", text, value, vpos, "%s is not a number" % key)
            out[key] = int(value) != 0
    return out


def format_vdevfn(vdevfn):
    """``vdevfn-N`` value: ``%x``, or None for 0 (libxl writes the key only when non-zero)."""
    return ("%x" % vdevfn) if vdevfn else None


def parse_vdevfn(text):
    """Parse a ``vdevfn-N`` value (hex, as libxl's strtol(s, NULL, 16))."""
    if not isinstance(text, str) or not _VSLOT.match(text.strip()):
        raise _fail("vdevfn value", text, text, 0, "expected a hex number")
    value = int(_VSLOT.match(text.strip()).group(1), 16)
    if value > 0xFF:
        raise _fail("vdevfn value", text, text, 0, "out of range (max ff)")
    return value


def parse_specs(values: Iterable[Union[str, Mapping, PciSpec]]) -> List[PciSpec]:
    """Parse a list of specs; the error names the list index too."""
    out = []
    for index, value in enumerate(values):
        try:
            out.append(PciSpec.coerce(value))
        except SpecError as exc:
            raise SpecError("device #%d: %s" % (index, exc.msg), index=index, **exc.details) from None
    return out

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI addresses and xl-pci-configuration(5) specs: tables and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.xen.pci.plugins.module_utils._bdf import (
    Bdf, PciFunction, PciSpec, format_opts, format_vdevfn, parse_opts, parse_specs, parse_vdevfn,
)
from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError, XenPciError

# The opts-N value real Xen 4.17 wrote for `xl pci-attach domu1 00:10.0`
# (real-xen-transcript.txt) and for a permissive attach (real-xen-negative-cases.txt).
REAL_OPTS = "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"
REAL_OPTS_PERMISSIVE = "msitranslate=0,power_mgmt=0,permissive=1,rdm_policy=strict"


# --------------------------------------------------------------------------
# Bdf
# --------------------------------------------------------------------------

BDF_VALID = [
    # text, canonical, xs_key, qmp_id, sbdf, devfn
    ("03:00.0", "0000:03:00.0", "0000-03-00-0", "pci-pt-03_00.0", 0x0300, 0x00),
    ("0000:03:00.0", "0000:03:00.0", "0000-03-00-0", "pci-pt-03_00.0", 0x0300, 0x00),
    ("00:10.0", "0000:00:10.0", "0000-00-10-0", "pci-pt-00_10.0", 0x0080, 0x80),
    ("0a:1f.7", "0000:0a:1f.7", "0000-0a-1f-7", "pci-pt-0a_1f.7", 0x0AFF, 0xFF),
    ("0A:1F.7", "0000:0a:1f.7", "0000-0a-1f-7", "pci-pt-0a_1f.7", 0x0AFF, 0xFF),
    ("ffff:ff:1f.7", "ffff:ff:1f.7", "ffff-ff-1f-7", "pci-pt-ff_1f.7", 0xFFFFFFFF, 0xFF),
    ("1:2:3.4", "0001:02:03.4", "0001-02-03-4", "pci-pt-02_03.4", 0x1021C, 0x1C),
    ("3:0.1", "0000:03:00.1", "0000-03-00-1", "pci-pt-03_00.1", 0x0301, 0x01),
    # pciback's vdev-N form has a two-digit function: still an address.
    ("0000:00:01.00", "0000:00:01.0", "0000-00-01-0", "pci-pt-00_01.0", 0x0008, 0x08),
    # libxlu's sscanf takes any number of digits within the limits.
    ("00000:003:001.2", "0000:03:01.2", "0000-03-01-2", "pci-pt-03_01.2", 0x030A, 0x0A),
]


@pytest.mark.parametrize("text,canon,xs_key,qmp_id,sbdf,devfn", BDF_VALID)
def test_bdf_valid(text, canon, xs_key, qmp_id, sbdf, devfn):
    bdf = Bdf.parse(text)
    assert str(bdf) == canon
    assert bdf.xs_key == xs_key
    assert bdf.qmp_id == qmp_id
    assert bdf.sbdf == sbdf
    assert bdf.devfn == devfn
    assert Bdf.from_xs_key(xs_key) == bdf
    assert Bdf.from_sbdf(sbdf) == bdf
    assert Bdf.parse(canon) == bdf


BDF_INVALID = [
    # text, offending token, 0-based position, words of the reason
    ("", "", 0, "missing"),
    ("03:00", "03:00", 0, "no function"),
    ("0300.0", "0300.0", 0, "number of ':'"),
    ("1:2:3:4.0", "1:2:3:4.0", 0, "number of ':'"),
    ("zz:00.0", "zz", 0, "bus is not a hex number"),
    ("03:g0.0", "g0", 3, "slot is not a hex number"),
    ("x000:03:00.0", "x000", 0, "domain is not a hex number"),
    ("10000:00:00.0", "10000", 0, "domain is out of range"),
    ("100:00.0", "100", 0, "bus is out of range"),
    ("03:20.0", "20", 3, "slot is out of range"),
    ("0000:03:20.0", "20", 8, "slot is out of range"),
    ("03:00.8", "8", 6, "function is out of range"),
    ("03:00.*", "*", 6, "function is not a hex digit"),
    ("03:00.", "", 6, "function is not a hex digit"),
    (":00.0", "", 0, "bus is not a hex number"),
    (" 03:00.0", " 03", 0, "bus is not a hex number"),
    ("03:00.0 ", "0 ", 6, "function is not a hex digit"),
    ("+3:00.0", "+3", 0, "bus is not a hex number"),
    ("03:0x1f.0", "0x1f", 3, "slot is not a hex number"),
    ("03:00.0@4", "0@4", 6, "function is not a hex digit"),
]


@pytest.mark.parametrize("text,token,pos,reason", BDF_INVALID)
def test_bdf_invalid(text, token, pos, reason):
    with pytest.raises(SpecError) as info:
        Bdf.parse(text)
    err = info.value
    assert err.details["token"] == token
    assert err.details["position"] == pos
    assert reason in err.msg
    assert repr(token) in err.msg and "column %d" % (pos + 1) in err.msg


@pytest.mark.parametrize("value", [None, 3, b"03:00.0", ["03:00.0"]])
def test_bdf_parse_rejects_non_strings(value):
    with pytest.raises(SpecError, match="expected a string"):
        Bdf.parse(value)


@pytest.mark.parametrize("text", ["0000:03:00.0", "0000-03-00", "000-03-00-0", "0000-03-00-8", "0000-03-20-0",
                                  "0000-03-00-0 ", "0000_03_00_0", ""])
def test_xs_key_invalid(text):
    with pytest.raises(SpecError, match="libxl PCI key"):
        Bdf.from_xs_key(text)


@pytest.mark.parametrize("fields", [(0x10000, 0, 0, 0), (0, 0x100, 0, 0), (0, 0, 0x20, 0), (0, 0, 0, 8),
                                    (-1, 0, 0, 0), (0, True, 0, 0), ("0", 0, 0, 0)])
def test_bdf_constructor_checks_limits(fields):
    with pytest.raises(SpecError, match="invalid PCI address"):
        Bdf(*fields)


@pytest.mark.parametrize("value", [-1, 0x100000000, True, "0x300"])
def test_from_sbdf_invalid(value):
    with pytest.raises(SpecError, match="invalid SBDF"):
        Bdf.from_sbdf(value)


def test_bdf_order_hash_and_helpers():
    items = [Bdf.parse(t) for t in ("0001:00:00.0", "00:10.1", "00:10.0", "03:00.0", "00:02.0")]
    assert [str(b) for b in sorted(items)] == [
        "0000:00:02.0", "0000:00:10.0", "0000:00:10.1", "0000:03:00.0", "0001:00:00.0"]
    assert len({Bdf.parse("03:00.0"), Bdf.parse("0000:03:00.0"), Bdf.parse("3:0.0")}) == 1
    assert Bdf.parse("03:00.1").same_slot(Bdf.parse("0000:03:00.7"))
    assert not Bdf.parse("03:00.1").same_slot(Bdf.parse("0000:03:01.1"))
    assert Bdf.parse("03:00.1").slot_address == "0000:03:00"
    bdf = Bdf.parse("03:00.0")
    assert Bdf.parse(bdf) is bdf
    with pytest.raises(Exception):
        bdf.bus = 4  # frozen


# --------------------------------------------------------------------------
# PciSpec: strings
# --------------------------------------------------------------------------

SPEC_VALID = [
    # text, canonical format, to_dict(resolve=False)
    ("03:00.0", "0000:03:00.0", {"bdf": "0000:03:00.0"}),
    ("0000:03:00.0@4,permissive=1", "0000:03:00.0@04,permissive=1",
     {"bdf": "0000:03:00.0", "vslot": 4, "permissive": True}),
    ("03:00.0@1f", "0000:03:00.0@1f", {"bdf": "0000:03:00.0", "vslot": 31}),
    ("03:00.0@0x1F", "0000:03:00.0@1f", {"bdf": "0000:03:00.0", "vslot": 31}),
    ("03:00.0@0", "0000:03:00.0@00", {"bdf": "0000:03:00.0", "vslot": 0}),
    ("03:00.*@5", "0000:03:00.*@05", {"bdf": "0000:03:00.*", "vslot": 5}),
    ("03:00.*", "0000:03:00.*", {"bdf": "0000:03:00.*"}),
    ("bdf=03:00.0", "0000:03:00.0", {"bdf": "0000:03:00.0"}),
    ("vslot=4,bdf=03:00.0", "0000:03:00.0@04", {"bdf": "0000:03:00.0", "vslot": 4}),
    ("name=gpu0", "name=gpu0", {"name": "gpu0"}),
    ("name=gpu0,vslot=1a,seize=1", "name=gpu0,vslot=1a,seize=1", {"name": "gpu0", "vslot": 0x1A, "seize": True}),
    ("vslot=3,name=nic@left", "name=nic@left,vslot=03", {"name": "nic@left", "vslot": 3}),
    ("name=a=b", "name=a=b", {"name": "a=b"}),
    ("03:00.0,rdm_policy=RELAXED,power_mgmt=1,seize=0,msitranslate=1,permissive=0",
     "0000:03:00.0,permissive=0,msitranslate=1,seize=0,power_mgmt=1,rdm_policy=relaxed",
     {"bdf": "0000:03:00.0", "permissive": False, "msitranslate": True, "seize": False, "power_mgmt": True,
      "rdm_policy": "relaxed"}),
    ("03:00.0,", "0000:03:00.0", {"bdf": "0000:03:00.0"}),  # libxlu takes one trailing comma
    ("03:00.0@4,seize=1,", "0000:03:00.0@04,seize=1", {"bdf": "0000:03:00.0", "vslot": 4, "seize": True}),
    ("FFFF:FF:1F.7", "ffff:ff:1f.7", {"bdf": "ffff:ff:1f.7"}),
    ("0000:00:01.00", "0000:00:01.0", {"bdf": "0000:00:01.0"}),
]


@pytest.mark.parametrize("text,canon,explicit", SPEC_VALID)
def test_spec_valid(text, canon, explicit):
    spec = PciSpec.parse(text)
    assert spec.format() == canon
    assert str(spec) == canon
    assert spec.to_dict(resolve=False) == explicit
    assert PciSpec.parse(canon) == spec
    assert PciSpec.from_dict(explicit) == spec


def test_man_page_equivalent_forms():
    # xl-pci-configuration(5) shows these three as equivalent, with vslot 20;
    # but 0x20 is beyond the vslot limit 0x1f, so libxlu (and we) refuse the
    # man page's own example. With a vslot in range they are equal.
    forms = ["36:00.0@1a,seize=1", "36:00.0,vslot=1a,seize=1", "bdf=36:00.0,vslot=1a,seize=1"]
    assert len({PciSpec.parse(f) for f in forms}) == 1
    with pytest.raises(SpecError, match="vslot is out of range"):
        PciSpec.parse("36:00.0@20,seize=1")


SPEC_INVALID = [
    # text, offending token, 0-based position, words of the reason
    ("", "", 0, "empty spec"),
    (",", "", 0, "missing PCI address"),
    ("permissive=1", "permissive=1", 0, "no bdf and no name"),
    ("03:00.0,foo=1", "foo", 8, "unknown key"),
    ("03:00.0,PERMISSIVE=1", "PERMISSIVE", 8, "unknown key"),
    ("03:00.0,=1", "", 8, "unknown key"),
    ("03:00.0, permissive=1", " permissive", 8, "unknown key"),
    ("03:00.0,permissive", "permissive", 8, "expected key=value"),
    ("03:00.0,,permissive=1", "", 8, "empty item"),
    ("03:00.0,,", "", 8, "empty item"),
    ("03:00.0,permissive=yes", "yes", 19, "must be 0 or 1"),
    ("03:00.0,permissive=true", "true", 19, "must be 0 or 1"),
    ("03:00.0,seize=2", "2", 14, "must be 0 or 1"),
    ("03:00.0,msitranslate=01", "01", 21, "must be 0 or 1"),
    ("03:00.0,power_mgmt=", "", 19, "empty value for power_mgmt"),
    ("03:00.0,rdm_policy=loose", "loose", 19, "strict or relaxed"),
    ("03:00.0,rdm_policy=invalid", "invalid", 19, "strict or relaxed"),
    ("03:00.0,rdm_policy=", "", 19, "strict or relaxed"),
    ("03:00.0@20", "20", 8, "vslot is out of range"),
    ("03:00.0@", "", 8, "empty vslot"),
    ("03:00.0@4x", "4x", 8, "vslot is not a hex number"),
    ("03:00.0@-1", "-1", 8, "vslot is not a hex number"),
    ("03:00.0,vslot=4zz", "4zz", 14, "vslot is not a hex number"),
    ("03:00.0,vslot=100", "100", 14, "vslot is out of range"),
    ("03:00.0@4@5", "4@5", 8, "vslot is not a hex number"),
    ("03:00.0,vslot=4,vslot=5", "vslot", 16, "duplicate vslot (first given at column 9)"),
    ("03:00.0@4,vslot=5", "vslot", 10, "duplicate vslot (first given at column 9)"),
    ("03:00.0,bdf=04:00.0", "bdf", 8, "duplicate bdf (first given at column 1)"),
    ("03:00.0,seize=1,seize=1", "seize", 16, "duplicate seize"),
    ("name=a,name=b", "name", 7, "duplicate name"),
    ("03:00.0,name=gpu0", "name", 8, "bdf and name are exclusive"),
    ("name=gpu0,bdf=03:00.0", "name", 0, "bdf and name are exclusive"),
    ("name=", "", 5, "empty name"),
    ("name=my gpu", "my gpu", 5, "must not contain blanks"),
    ("name=gpu\t0", "gpu\t0", 5, "must not contain blanks"),
    ("03:20.0", "20", 3, "slot is out of range"),
    ("bdf=03:20.0", "20", 7, "slot is out of range"),
    ("bdf=0000:03:00.9,vslot=4", "9", 15, "function is out of range"),
    ("03:00.8@4", "8", 6, "function is out of range"),
    ("bdf=", "", 4, "missing PCI address"),
    ("bdf=03:00.0x", "0x", 10, "function is not a hex digit"),
    ("03:00.0 ,seize=1", "0 ", 6, "function is not a hex digit"),
    (" 03:00.0", " 03", 0, "bus is not a hex number"),
    ("03:00", "03:00", 0, "no function"),
    ("gpu0", "gpu0", 0, "no function"),
    ("03:00.0;seize=1", "03:00.0;seize", 0, "unknown key"),
    ("03:00.0@4=1", "03:00.0@4", 0, "unknown key"),
    ("10000:00:00.0", "10000", 0, "domain is out of range"),
]


@pytest.mark.parametrize("text,token,pos,reason", SPEC_INVALID)
def test_spec_invalid(text, token, pos, reason):
    with pytest.raises(SpecError) as info:
        PciSpec.parse(text)
    err = info.value
    assert err.details["spec"] == text
    assert err.details["token"] == token, err.msg
    assert err.details["position"] == pos, err.msg
    assert reason in err.msg
    # The message names the spec, the token and where it is.
    assert err.msg.startswith("invalid PCI spec %r: %r at column %d: " % (text, token, pos + 1)), err.msg
    assert isinstance(err, XenPciError) and isinstance(err, ValueError)
    assert err.to_dict()["token"] == token


@pytest.mark.parametrize("value", [None, 3, b"03:00.0", ("03:00.0",)])
def test_spec_parse_rejects_non_strings(value):
    with pytest.raises(SpecError, match="expected a string"):
        PciSpec.parse(value)


# --------------------------------------------------------------------------
# PciSpec: mappings, defaults, constructor checks
# --------------------------------------------------------------------------

DICT_VALID = [
    ({"bdf": "03:00.0", "vslot": 4, "permissive": True}, "0000:03:00.0@04,permissive=1"),
    ({"bdf": "03:00.0", "vslot": "10"}, "0000:03:00.0@10"),      # a string vslot is hex, like xl
    ({"bdf": "03:00.0", "vslot": "0x1f"}, "0000:03:00.0@1f"),
    ({"bdf": "03:00.0", "vslot": 10}, "0000:03:00.0@0a"),        # an int is taken as is
    ({"name": "gpu0"}, "name=gpu0"),
    ({"name": "gpu0", "bdf": None, "vslot": None}, "name=gpu0"),  # None counts as absent
    ({"bdf": "0000:03:00.*", "vslot": 5, "rdm_policy": "Relaxed"}, "0000:03:00.*@05,rdm_policy=relaxed"),
    ({"bdf": Bdf(0, 3, 0, 1), "seize": "yes", "msitranslate": "off", "power_mgmt": 1, "permissive": 0},
     "0000:03:00.1,permissive=0,msitranslate=0,seize=1,power_mgmt=1"),
    ({"bdf": "03:00.0", "permissive": "True"}, "0000:03:00.0,permissive=1"),
    ({"bdf": "03:00.0", "permissive": "1"}, "0000:03:00.0,permissive=1"),
]


@pytest.mark.parametrize("data,canon", DICT_VALID)
def test_dict_valid(data, canon):
    spec = PciSpec.from_dict(data)
    assert spec.format() == canon
    assert PciSpec.coerce(data) == spec
    assert PciSpec.parse(canon) == spec


DICT_INVALID = [
    ({"bdf": "03:00.0", "slot": 4}, "unknown key(s) slot", "slot"),
    ({"bdf": "03:00.0", "zz": 1, "aa": 2}, "unknown key(s) aa, zz", "aa"),
    ({}, "no bdf and no name", ""),
    ({"bdf": None, "name": None}, "no bdf and no name", ""),
    ({"bdf": "03:00.0", "name": "gpu0"}, "exclusive", "name"),
    ({"bdf": "03:20.0"}, "slot is out of range", "20"),
    ({"bdf": 3}, "bdf must be a string", "3"),
    ({"name": ""}, "empty name", ""),
    ({"name": "a,b"}, "must not contain blanks, commas", "a,b"),
    ({"name": 7}, "name must be a string", "7"),
    ({"bdf": "03:00.0", "vslot": 32}, "vslot 32 is out of range", "32"),
    ({"bdf": "03:00.0", "vslot": -1}, "out of range", "-1"),
    ({"bdf": "03:00.0", "vslot": True}, "vslot must be an integer", "True"),
    ({"bdf": "03:00.0", "vslot": "20"}, "vslot is out of range", "20"),
    ({"bdf": "03:00.0", "vslot": "four"}, "vslot is not a hex number", "four"),
    ({"bdf": "03:00.0", "vslot": 4.0}, "vslot must be an integer", "4.0"),
    ({"bdf": "03:00.0", "permissive": 2}, "permissive must be a boolean", "2"),
    ({"bdf": "03:00.0", "seize": "maybe"}, "seize must be a boolean", "'maybe'"),
    ({"bdf": "03:00.0", "power_mgmt": None, "msitranslate": []}, "msitranslate must be a boolean", "[]"),
    ({"bdf": "03:00.0", "rdm_policy": "loose"}, "strict or relaxed", "loose"),
    ({"bdf": "03:00.0", "rdm_policy": 1}, "strict or relaxed", "1"),
]


@pytest.mark.parametrize("data,reason,token", DICT_INVALID)
def test_dict_invalid(data, reason, token):
    with pytest.raises(SpecError) as info:
        PciSpec.from_dict(data)
    assert reason in info.value.msg
    assert info.value.details["token"] == token


@pytest.mark.parametrize("value", [3, None, ["03:00.0"], 2.5])
def test_coerce_rejects_other_types(value):
    with pytest.raises(SpecError, match="expected a string or a mapping"):
        PciSpec.coerce(value)


def test_defaults_and_resolution():
    spec = PciSpec.parse("03:00.0,permissive=0")
    assert spec.to_dict() == {"bdf": "0000:03:00.0", "name": None, "vslot": None, "permissive": False,
                              "msitranslate": False, "seize": False, "power_mgmt": False, "rdm_policy": "strict"}
    # A domain config's globals fill only what the spec did not say.
    merged = spec.with_defaults(permissive=True, seize=True, rdm_policy="relaxed")
    assert (merged.permissive, merged.seize, merged.rdm_policy, merged.msitranslate) == (False, True, "relaxed", False)
    assert spec.format(include_defaults=True) == \
        "0000:03:00.0,permissive=0,msitranslate=0,seize=0,power_mgmt=0,rdm_policy=strict"
    assert PciSpec.parse("03:00.0") != PciSpec.parse("03:00.0,permissive=0")
    assert PciSpec.parse("03:00.0").with_defaults() == PciSpec.parse("03:00.0,permissive=0").with_defaults()
    with pytest.raises(SpecError, match="unknown PCI option default"):
        spec.with_defaults(vslot=3)


@pytest.mark.parametrize("kwargs", [
    {}, {"bdf": Bdf(0, 3, 0, 0), "name": "x"}, {"bdf": "03:00.0"}, {"name": "x", "all_functions": True},
    {"bdf": Bdf(0, 3, 0, 1), "all_functions": True}, {"name": "x", "vslot": 32}, {"name": "x", "vslot": True},
    {"name": "x", "permissive": 1}, {"name": "x", "rdm_policy": "RELAXED"}, {"name": 3}, {"name": "a b"},
])
def test_spec_constructor_checks(kwargs):
    with pytest.raises(SpecError, match="invalid PCI spec"):
        PciSpec(**kwargs)


def test_parse_specs_names_the_index():
    assert [s.format() for s in parse_specs(["03:00.0", {"name": "x"}, PciSpec.parse("04:00.0")])] == \
        ["0000:03:00.0", "name=x", "0000:04:00.0"]
    with pytest.raises(SpecError) as info:
        parse_specs(["03:00.0", "03:00.0,bogus=1"])
    assert info.value.msg.startswith("device #1: invalid PCI spec")
    assert info.value.details["index"] == 1 and info.value.details["token"] == "bogus"


# --------------------------------------------------------------------------
# What the toolstack writes: opts-N, vdevfn-N, function expansion
# --------------------------------------------------------------------------

def test_opts_format_matches_real_xen():
    assert PciSpec.parse("00:10.0").expand()[0].opts == REAL_OPTS
    assert PciSpec.parse("00:11.0,permissive=1,seize=1").expand()[0].opts == REAL_OPTS_PERMISSIVE
    assert format_opts() == REAL_OPTS
    assert format_opts(msitranslate=True, power_mgmt=True, permissive=True, rdm_policy="relaxed") == \
        "msitranslate=1,power_mgmt=1,permissive=1,rdm_policy=relaxed"
    with pytest.raises(SpecError):
        format_opts(rdm_policy="loose")


OPTS_VALID = [
    (REAL_OPTS, {"msitranslate": False, "power_mgmt": False, "permissive": False, "rdm_policy": "strict"}),
    (REAL_OPTS_PERMISSIVE, {"msitranslate": False, "power_mgmt": False, "permissive": True, "rdm_policy": "strict"}),
    # Xen before 4.6 wrote only the first two (libxl's PCI_OPTIONS).
    ("msitranslate=1,power_mgmt=0", {"msitranslate": True, "power_mgmt": False, "permissive": False, "rdm_policy": "strict"}),
    # libxl's reader skips blanks before keys and ignores keys it does not know.
    ("msitranslate=0, permissive=1, rdm_policy=Relaxed,future=x",
     {"msitranslate": False, "power_mgmt": False, "permissive": True, "rdm_policy": "relaxed"}),
    ("permissive=2", {"msitranslate": False, "power_mgmt": False, "permissive": True, "rdm_policy": "strict"}),
]


@pytest.mark.parametrize("text,expected", OPTS_VALID)
def test_parse_opts(text, expected):
    assert parse_opts(text) == expected


@pytest.mark.parametrize("text,token,pos", [
    ("", "", 0), ("permissive", "permissive", 0), ("permissive=yes", "yes", 11), ("rdm_policy=loose", "loose", 11),
    ("msitranslate=0,,permissive=0", "", 15), ("msitranslate=0,  power_mgmt", "power_mgmt", 17),
])
def test_parse_opts_invalid(text, token, pos):
    with pytest.raises(SpecError) as info:
        parse_opts(text)
    assert info.value.details["token"] == token and info.value.details["position"] == pos
    assert info.value.msg.startswith("invalid opts value")


def test_vdevfn_values():
    assert format_vdevfn(0) is None  # libxl writes vdevfn-N only when non-zero
    assert format_vdevfn(0x20) == "20"
    assert format_vdevfn(0x09) == "9"
    assert parse_vdevfn("20") == 0x20
    assert parse_vdevfn("9") == 9
    assert parse_vdevfn("0xff") == 0xFF
    for bad in ("", "zz", "100", "-1", None):
        with pytest.raises(SpecError, match="vdevfn value"):
            parse_vdevfn(bad)


def test_expand_single_function_lands_on_virtual_function_0():
    # libxl: a single function is function 0 of the vslot, whatever its host number.
    (fn,) = PciSpec.parse("03:00.2@4,permissive=1").expand()
    assert fn.bdf == Bdf(0, 3, 0, 2)
    assert (fn.vdevfn, fn.vslot, fn.vfunc, fn.vdevfn_value, fn.qmp_addr) == (0x20, 4, 0, "20", "4.0")
    assert fn.permissive and fn.opts == REAL_OPTS_PERMISSIVE
    (auto,) = PciSpec.parse("03:00.2").expand()
    assert (auto.vdevfn, auto.vslot, auto.vdevfn_value, auto.qmp_addr) == (0, None, None, None)
    (zero,) = PciSpec.parse("03:00.0@0").expand()  # vslot 0 is "no vslot" to libxl
    assert zero.vdevfn_value is None


def test_expand_all_functions():
    host = ["0000:03:00.0", "0000:03:00.3", "03:00.1", Bdf(0, 4, 0, 0), Bdf(0, 3, 1, 0), Bdf(1, 3, 0, 5)]
    fns = PciSpec.parse("03:00.*@5,rdm_policy=relaxed").expand(host)
    # Every present function keeps its number; 7 down to 0 so function 0 comes last.
    assert [str(f.bdf) for f in fns] == ["0000:03:00.3", "0000:03:00.1", "0000:03:00.0"]
    assert [f.vdevfn_value for f in fns] == ["2b", "29", "28"]
    assert [f.qmp_addr for f in fns] == ["5.3", "5.1", "5.0"]
    assert all(f.rdm_policy == "relaxed" and f.opts.endswith("rdm_policy=relaxed") for f in fns)
    with pytest.raises(SpecError, match="needs a non-zero vslot") as info:
        PciSpec.parse("03:00.*").expand(host)
    assert info.value.details["token"] == "0000:03:00.*"
    with pytest.raises(SpecError, match="needs a non-zero vslot"):
        PciSpec.parse("03:00.*@0").expand(host)
    # Detach does not need the vslot.
    assert len(PciSpec.parse("03:00.*").expand(host, require_vslot=False)) == 3
    with pytest.raises(SpecError, match="no function of 0000:05:00 is present"):
        PciSpec.parse("05:00.*@5").expand(host)
    with pytest.raises(SpecError, match="invalid PCI address"):
        PciSpec.parse("03:00.*@5").expand(["not-an-address"])


def test_expand_named_spec_needs_resolution():
    spec = PciSpec.parse("name=gpu0,vslot=7")
    with pytest.raises(SpecError, match="must be resolved") as info:
        spec.expand()
    assert info.value.details["token"] == "gpu0"
    (fn,) = spec.expand(bdf="0000:03:00.0")
    assert (str(fn.bdf), fn.name, fn.vdevfn_value) == ("0000:03:00.0", "gpu0", "38")


def test_function_from_backend_keys_of_real_xen():
    fn = PciFunction.from_backend("0000:00:10.0", REAL_OPTS)
    assert fn == PciSpec.parse("00:10.0").expand()[0]
    fn = PciFunction.from_backend("0000:00:11.0", REAL_OPTS_PERMISSIVE, vdevfn="29", name="nic")
    assert (fn.vslot, fn.vfunc, fn.permissive, fn.name, fn.seize) == (5, 1, True, "nic", False)
    assert fn.to_spec().format() == "0000:00:11.0@05,permissive=1,msitranslate=0,seize=0,power_mgmt=0,rdm_policy=strict"
    assert fn.to_dict() == {"bdf": "0000:00:11.0", "vdevfn": 0x29, "vslot": 5, "vfunc": 1, "permissive": True,
                            "msitranslate": False, "seize": False, "power_mgmt": False, "rdm_policy": "strict",
                            "name": "nic"}
    assert PciFunction.from_backend("0000:00:10.0").opts == REAL_OPTS
    with pytest.raises(SpecError):
        PciFunction.from_backend("0000:00:10.0", "permissive=x")
    for kwargs in ({"bdf": "0000:00:10.0"}, {"bdf": Bdf(0, 0, 0x10, 0), "vdevfn": 256},
                   {"bdf": Bdf(0, 0, 0x10, 0), "rdm_policy": "x"}):
        with pytest.raises(SpecError, match="invalid PCI function"):
            PciFunction(**kwargs)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

bdfs = st.builds(Bdf, st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7))
flags = st.one_of(st.none(), st.booleans())
names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_categories=("Cc", "Cf", "Zs"),
                              blacklist_characters=","), min_size=1, max_size=12)


@st.composite
def specs(draw):
    fields = {"vslot": draw(st.one_of(st.none(), st.integers(0, 0x1F))),
              "rdm_policy": draw(st.sampled_from([None, "strict", "relaxed"]))}
    for key in ("permissive", "msitranslate", "seize", "power_mgmt"):
        fields[key] = draw(flags)
    if draw(st.booleans()):
        bdf = draw(bdfs)
        all_f = draw(st.booleans())
        if all_f:
            bdf = Bdf(bdf.domain, bdf.bus, bdf.slot, 0)
        return PciSpec(bdf=bdf, all_functions=all_f, **fields)
    return PciSpec(name=draw(names), **fields)


def _respell(draw, spec):
    """Another valid spelling of ``spec``: other case, digits, order, positional or keyed."""
    def hexnum(value, width):
        digits = "%0*x" % (draw(st.integers(1 if value < 16 else 2, width + 2)), value)
        return digits.upper() if draw(st.booleans()) else digits

    items = []
    if spec.bdf is not None:
        b = spec.bdf
        dom = "" if b.domain == 0 and draw(st.booleans()) else hexnum(b.domain, 4) + ":"
        addr = "%s%s:%s.%s" % (dom, hexnum(b.bus, 2), hexnum(b.slot, 2), "*" if spec.all_functions else hexnum(b.func, 1))
        positional = draw(st.booleans())
        if positional:
            head = addr
            if spec.vslot is not None and draw(st.booleans()):
                head += "@" + draw(st.sampled_from(["", "0x", "0X"])) + hexnum(spec.vslot, 2)
            else:
                if spec.vslot is not None:
                    items.append("vslot=" + hexnum(spec.vslot, 2))
        else:
            items.append("bdf=" + addr)
            if spec.vslot is not None:
                items.append("vslot=" + hexnum(spec.vslot, 2))
    else:
        positional = False
        items.append("name=" + spec.name)
        if spec.vslot is not None:
            items.append("vslot=" + hexnum(spec.vslot, 2))
    for key in ("permissive", "msitranslate", "seize", "power_mgmt"):
        value = getattr(spec, key)
        if value is not None:
            items.append("%s=%d" % (key, value))
    if spec.rdm_policy is not None:
        items.append("rdm_policy=" + draw(st.sampled_from([spec.rdm_policy, spec.rdm_policy.upper(),
                                                           spec.rdm_policy.capitalize()])))
    items = draw(st.permutations(items))
    if positional:
        items = [head] + list(items)
    return ",".join(items) + ("," if draw(st.booleans()) else "")


@given(bdfs)
def test_bdf_round_trips(bdf):
    assert Bdf.parse(str(bdf)) == bdf
    assert Bdf.from_xs_key(bdf.xs_key) == bdf
    assert Bdf.from_sbdf(bdf.sbdf) == bdf
    assert bdf.devfn == (bdf.sbdf & 0xFF)
    if bdf.domain == 0:
        assert Bdf.parse(str(bdf)[5:]) == bdf
    assert Bdf.parse(str(bdf).upper()) == bdf


@given(bdfs, bdfs)
def test_bdf_order_is_numeric(a, b):
    assert (a < b) == ((a.domain, a.bus, a.slot, a.func) < (b.domain, b.bus, b.slot, b.func))
    assert (a < b) == (a.sbdf < b.sbdf)
    assert (a == b) == (hash(a) == hash(b) and str(a) == str(b))


@given(specs())
def test_spec_format_parse_round_trip(spec):
    text = spec.format()
    assert PciSpec.parse(text) == spec
    assert PciSpec.parse(text).format() == text
    assert PciSpec.from_dict(spec.to_dict(resolve=False)) == spec
    assert PciSpec.from_dict(spec.to_dict()) == spec.with_defaults()
    assert PciSpec.parse(spec.format(include_defaults=True)) == spec.with_defaults()


@given(st.data(), specs())
def test_any_valid_spelling_parses_to_the_same_spec(data, spec):
    text = _respell(data.draw, spec)
    assert PciSpec.parse(text) == spec, text


@given(st.one_of(st.text(max_size=40),
                 st.text(alphabet="0123456789abcdefABCDEF:.,@=*x -_" + "bdfvslotpermissivenamerdm_", max_size=40)))
@settings(max_examples=400)
def test_random_text_raises_only_spec_error(text):
    try:
        spec = PciSpec.parse(text)
    except SpecError as exc:
        assert exc.msg.startswith("invalid PCI spec ")
        assert 0 <= exc.details["position"] <= len(text)
        return
    assert PciSpec.parse(spec.format()) == spec


@given(st.text(alphabet="0123456789abcdefx:.* -", max_size=20))
def test_random_addresses_raise_only_spec_error(text):
    try:
        bdf = Bdf.parse(text)
    except SpecError as exc:
        assert exc.details["token"] in text
        return
    assert Bdf.parse(str(bdf)) == bdf


@given(flags, flags, flags, st.sampled_from(["strict", "relaxed"]))
def test_opts_round_trip(msi, pm, perm, rdm):
    text = format_opts(bool(msi), bool(pm), bool(perm), rdm)
    assert parse_opts(text) == {"msitranslate": bool(msi), "power_mgmt": bool(pm), "permissive": bool(perm),
                                "rdm_policy": rdm}


@given(specs(), st.sets(st.integers(0, 7), min_size=1))
def test_expand_matches_libxl_numbering(spec, present_funcs):
    if spec.bdf is None:
        spec = PciSpec(bdf=Bdf(0, 3, 0, 0), vslot=spec.vslot, permissive=spec.permissive)
    host = [Bdf(spec.bdf.domain, spec.bdf.bus, spec.bdf.slot, f) for f in present_funcs]
    if spec.all_functions and not spec.vslot:
        with pytest.raises(SpecError):
            spec.expand(host)
        return
    fns = spec.expand(host)
    base = (spec.vslot or 0) << 3
    if spec.all_functions:
        assert [f.bdf.func for f in fns] == sorted(present_funcs, reverse=True)
        assert [f.vdevfn for f in fns] == [base | f.bdf.func for f in fns]
    else:
        assert [(f.bdf, f.vdevfn) for f in fns] == [(spec.bdf, base)]
    for fn in fns:
        back = PciFunction.from_backend(str(fn.bdf), fn.opts, fn.vdevfn_value, fn.name)
        assert back == PciFunction(fn.bdf, fn.vdevfn, fn.permissive, fn.msitranslate, False, fn.power_mgmt,
                                   fn.rdm_policy, fn.name)

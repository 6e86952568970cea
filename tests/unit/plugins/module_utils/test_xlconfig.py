# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""xl config files: parse what xl parses, edit the pci list and keep every other byte."""

from __future__ import annotations

import re

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError
from ansible_collections.xen.pci.plugins.module_utils._xlconfig import (
    Atom, ListValue, XlConfig, XlConfigError, edit_pci_config, quote, strtol)

# A PV guest as Debian's xen-tools writes them, with a multi-line pci list.
PV = """\
#
# Configuration file for the Xen instance web1, created
# by xen-tools 4.9.2 on Tue Nov 25 10:00:00 2026.
#

#
#  Kernel + memory size
#
kernel      = '/usr/lib/grub-xen/grub-x86_64-xen.bin'
type        = 'pvh' # changed below
type        = 'pv'
vcpus       = '2'
memory      = '1024'

#
#  Disk device(s).
#
root        = '/dev/xvda2 ro'
disk        = [
                  'file:/srv/xen/domains/web1/disk.img,xvda2,w',
                  'file:/srv/xen/domains/web1/swap.img,xvda1,w',
              ]

name        = 'web1'

vif         = [ 'ip=10.0.0.5 ,mac=00:16:3E:1A:2B:3C,bridge=xenbr0' ]

pci         = [
                  '03:00.0',            # NIC, port 1
                  # the GPU and its audio function
                  '0000:04:00.0,permissive=1',
                  '0000:04:00.1',
              ]

on_poweroff = 'destroy'
on_reboot   = 'restart'
on_crash    = 'restart'
"""

# An HVM guest in double quotes, one-line lists, ';' separators and no final newline.
HVM = ('builder = "hvm"\nname = "win10"; memory = 8192\nvcpus=4\n'
       'pci = [ "0000:01:00.0@3,rdm_policy=relaxed", "0000:01:00.1" ]  # GPU + HDMI audio\n'
       'pci_permissive = 0x1\n# trailing comment without newline')


def test_round_trip_and_reading():
    for text in (PV, HVM):
        edit = edit_pci_config(text, None)
        assert edit.text == text and edit.actions == []
        same = edit_pci_config(text, [], "present")
        assert same.text == text and not same.changed
    cfg = XlConfig.parse(PV)
    assert cfg.last("type").value.value == "pv" and cfg.last("type").line == 11
    pci = cfg.last("pci").value
    assert isinstance(pci, ListValue) and [i.value.value for i in pci.items] == ["03:00.0", "0000:04:00.0,permissive=1", "0000:04:00.1"]
    assert pci.items[0].trailing == "# NIC, port 1"
    assert pci.items[1].leading == ["# the GPU and its audio function"]
    hvm = XlConfig.parse(HVM)
    assert hvm.last("memory").value == Atom("number", "8192", "8192", 41, 45, 2, 26)
    assert [s.key for s in hvm.settings] == ["builder", "name", "memory", "vcpus", "pci", "pci_permissive"]
    assert hvm.quote_style() == '"' and cfg.quote_style() == "'"


def test_strings_escapes_numbers_and_nested_lists():
    cfg = XlConfig.parse("a = 'it\\'s'\nb = \"tab\\there \\\\ \\x41\\101\"\nc = [ [1, 2], 'x', ]\nd += []\n")
    assert cfg.last("a").value.value == "it's"
    assert cfg.last("b").value.value == "tab\there \\ AA"
    nested = cfg.last("c").value
    assert isinstance(nested.items[0].value, ListValue) and len(nested.items) == 2
    assert cfg.last("d").op == "+="
    assert quote("it's", "'") == "'it\\'s'" and quote('a"b') == '"a\\"b"'
    assert [strtol(s) for s in ("1", "0x1f", "010", " -3", "0", "1a", "", "0x", "yes")] == [1, 31, 8, -3, 0, None, None, None, None]


def test_present_adds_to_a_multiline_list_keeping_comments_and_layout():
    edit = edit_pci_config(PV, ["0000:03:00.0", "05:00.0@4", {"bdf": "0000:04:00.1"}], "present")
    assert edit.actions == ["add 0000:05:00.0@04 to pci"]
    expected = PV.replace("                  '0000:04:00.1',\n", "                  '0000:04:00.1',\n                  '0000:05:00.0@04',\n")
    assert edit.text == expected
    assert edit.devices == ["0000:03:00.0", "0000:04:00.0,permissive=1", "0000:04:00.1", "0000:05:00.0@04"]
    # idempotent on its own output
    again = edit_pci_config(edit.text, ["0000:03:00.0", "05:00.0@4"], "present")
    assert again.text == edit.text and not again.changed


def test_changed_options_replace_the_item_in_place():
    edit = edit_pci_config(PV, ["03:00.0,permissive=1", "0000:04:00.0"], "present")
    assert edit.actions == ["change 0000:03:00.0 to 0000:03:00.0,permissive=1 in pci",
                            "change 0000:04:00.0,permissive=1 to 0000:04:00.0 in pci"]
    assert "                  '0000:03:00.0,permissive=1',            # NIC, port 1\n" in edit.text
    assert "                  # the GPU and its audio function\n                  '0000:04:00.0',\n" in edit.text
    # only the pci value changed
    head, tail = PV.split("pci         = [", maxsplit=1)[0], PV.split("              ]\n\non_poweroff")[1]
    assert edit.text.startswith(head) and edit.text.endswith(tail)


def test_options_compare_canonically_and_with_the_file_defaults():
    # rdm_policy=RELAXED, vslot 0x3 and a missing segment are the same device
    assert not edit_pci_config(HVM, ["1:0.0@0x3,rdm_policy=RELAXED"], "present").changed
    # pci_permissive = 0x1 makes every device permissive unless it says otherwise
    assert not edit_pci_config(HVM, ["0000:01:00.1,permissive=1"], "present").changed
    assert edit_pci_config(HVM, ["0000:01:00.1,permissive=0"], "present").changed
    # ...and turning the default off changes what an item without permissive= means
    edit = edit_pci_config(HVM, ["0000:01:00.1,permissive=1"], "present", {"pci_permissive": False})
    assert edit.actions == ["change pci_permissive from 0x1 to 0 (line 5)",
                            "change 0000:01:00.1 to 0000:01:00.1,permissive=1 in pci"]
    assert edit.text.endswith('"0000:01:00.1,permissive=1" ]  # GPU + HDMI audio\npci_permissive = 0\n# trailing comment without newline')


def test_absent_and_exact():
    edit = edit_pci_config(HVM, ["0000:01:00.1,permissive=1"], "absent")
    assert edit.actions == ["remove 0000:01:00.1 from pci"]
    assert 'pci = [ "0000:01:00.0@3,rdm_policy=relaxed" ]  # GPU + HDMI audio\n' in edit.text
    assert not edit_pci_config(edit.text, ["01:00.1"], "absent").changed

    exact = edit_pci_config(PV, ["0000:04:00.1", "0000:06:00.0"], "exact")
    assert exact.devices == ["0000:04:00.1", "0000:06:00.0"]
    assert ("pci         = [\n                  # the GPU and its audio function\n"
            "                  '0000:04:00.1',\n                  '0000:06:00.0',\n              ]\n") not in exact.text
    assert ("pci         = [\n                  '0000:04:00.1',\n                  '0000:06:00.0',\n              ]\n") in exact.text
    emptied = edit_pci_config(HVM, [], "exact")
    assert 'pci = []  # GPU + HDMI audio\n' in emptied.text
    assert not edit_pci_config(emptied.text, [], "exact").changed


def test_missing_settings_are_appended_in_the_file_style():
    edit = edit_pci_config("name='x'\nmemory=512", ["04:00.0"], "present", {"passthrough": "enabled", "e820_host": True})
    assert edit.text == "name='x'\nmemory=512\npci=['0000:04:00.0']\npassthrough='enabled'\ne820_host=1\n"
    assert edit.settings == {"passthrough": "enabled", "e820_host": True}
    assert not edit_pci_config(edit.text, ["04:00.0"], "present", {"passthrough": "enabled", "e820_host": True}).changed
    fresh = edit_pci_config("", ["04:00.0"], "exact", {"passthrough": "sync_pt"})
    assert fresh.text == 'pci = ["0000:04:00.0"]\npassthrough = "sync_pt"\n'
    # an existing string keeps its quotes; the comparison ignores case as libxl does
    assert not edit_pci_config("passthrough = 'Enabled'\n", None, "present", {"passthrough": "enabled"}).changed
    changed = edit_pci_config("passthrough = 'disabled'  # no\n", None, "present", {"passthrough": "share_pt"})
    assert changed.text == "passthrough = 'share_pt'  # no\n"
    # a duplicate setting: the last one is what xl reads, and the one edited
    dup = edit_pci_config("e820_host = 1\ne820_host = 0\n", None, "present", {"e820_host": True})
    assert dup.text == "e820_host = 1\ne820_host = 1\n"
    # absent: nothing to remove from a file without pci, nothing written
    assert edit_pci_config("name='x'\n", ["04:00.0"], "absent").text == "name='x'\n"


def test_duplicates_in_the_file_and_in_the_request():
    edit = edit_pci_config("pci = ['04:00.0', '0000:04:00.0']\n", ["04:00.0"], "present")
    assert edit.actions == ["remove the duplicate 0000:04:00.0 from pci"] and edit.text == "pci = ['04:00.0']\n"
    with pytest.raises(SpecError, match="device #1: 0000:04:00.0 is already given by device #0"):
        edit_pci_config("", ["04:00.0", "0000:04:00.0,permissive=1"], "present")
    with pytest.raises(SpecError, match=r"device #0: invalid PCI spec"):
        edit_pci_config("", ["04:00.g"], "present")
    # names are keys too
    assert not edit_pci_config("pci = ['name=gpu0']\n", [{"name": "gpu0"}], "present").changed


@pytest.mark.parametrize("text, line, column, reason", [
    ("pci = ['03:00.0'\nname = 'x'\n", 2, 1, "expected ',' or ']'"),
    ("pci = ['03:00.0',\n", 1, 7, "unterminated list"),
    ("name = 'web1\n", 1, 8, "unterminated string"),
    ("Name = 'x'\n", 1, 1, "keys are lower case"),
    ("a = 1 b = 2\n", 1, 7, "expected the end of the line"),
    ("a = [1,,2]\n", 1, 8, "expected a value"),
    ("name = 'x'\r\nmemory = 1\r\n", 1, 11, "carriage return"),
    ("on_crash = restart\n", 1, 12, "expected a value"),
    ("memory = 1.5\n", 1, 11, "looks like Python"),
    ("a 'x'\n", 1, 3, "expected '=' or '+='"),
    ("= 'x'\n", 1, 1, "expected a setting"),
    ("a = 'bad \\q escape'\n", 1, 10, "invalid escape"),
])
def test_malformed_files_name_line_and_column(text, line, column, reason):
    with pytest.raises(XlConfigError) as info:
        edit_pci_config(text, ["03:00.0"], "present", source="/etc/xen/x.cfg")
    assert reason in info.value.msg
    assert info.value.msg.startswith("/etc/xen/x.cfg: line %d, column %d: " % (line, column))
    assert info.value.details["line"] == line and info.value.details["column"] == column


@pytest.mark.parametrize("text, reason", [
    ("pci = '03:00.0'\n", "must be a [list]"),
    ("pci = [ 3 ]\n", "quoted PCI spec strings"),
    ("pci = [\n  'ok:00.0,permissive=yes' ]\n", "invalid PCI spec"),
    ("pci = ['03:00.0']\npci += ['04:00.0']\n", "extended with '+='"),
    ("pci_permissive += 1\n", "'+='"),
])
def test_pci_values_xl_would_misread_are_refused(text, reason):
    with pytest.raises(XlConfigError, match=re.escape(reason)):
        edit_pci_config(text, ["03:00.0"], "present", {"pci_permissive": True})


def test_bad_settings():
    with pytest.raises(SpecError, match="passthrough must be one of"):
        edit_pci_config("", None, "present", {"passthrough": "on"})
    with pytest.raises(SpecError, match="unknown setting"):
        edit_pci_config("", None, "present", {"pci_nosuch": True})
    with pytest.raises(SpecError, match="state must be"):
        edit_pci_config("", None, "latest")


# -- properties ------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
st = hypothesis.strategies

_ATOMS = st.one_of(
    st.from_regex(r"[0-9][0-9a-fx]{0,4}", fullmatch=True),
    st.builds(quote, st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=8),
              st.sampled_from(["'", '"'])))
_SPECS = st.builds(lambda b, s, f, opt: "%02x:%02x.%d%s" % (b, s, f, opt), st.integers(0, 255), st.integers(0, 31),
                   st.integers(0, 7), st.sampled_from(["", ",permissive=1", "@3", ",rdm_policy=relaxed", ",seize=0"]))


@st.composite
def configs(draw):
    """Random but valid xl configs: settings, comments, blank lines, lists over lines, a pci list."""
    lines = []
    for _index in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["setting", "list", "comment", "blank"]))
        key = draw(st.from_regex(r"[a-o][a-z_]{0,8}", fullmatch=True))
        sep = draw(st.sampled_from(["=", " = ", "\t=  "]))
        if kind == "setting":
            lines.append(key + sep + draw(_ATOMS) + draw(st.sampled_from(["", "  # note", ";"])))
        elif kind == "list":
            items = draw(st.lists(_ATOMS, max_size=3))
            joiner = draw(st.sampled_from([", ", ",\n    "]))
            lines.append(key + sep + "[" + joiner.join(items) + "]")
        elif kind == "comment":
            lines.append("# " + draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=10)))
        else:
            lines.append("")
    specs = draw(st.lists(_SPECS, max_size=4, unique_by=lambda s: s.split("@")[0].split(",")[0]))
    quote_char = draw(st.sampled_from(["'", '"']))
    if draw(st.booleans()):
        inner = ",\n  ".join(quote(s, quote_char) for s in specs)
        lines.insert(draw(st.integers(0, len(lines))), "pci = [\n  %s%s\n]" % (inner, "," if specs else ""))
    else:
        lines.insert(draw(st.integers(0, len(lines))), "pci = [%s]" % ", ".join(quote(s, quote_char) for s in specs))
    return "\n".join(lines) + draw(st.sampled_from(["\n", ""])), specs


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(configs(), st.lists(_SPECS, max_size=3, unique_by=lambda s: s.split("@")[0].split(",")[0]))
def test_edits_touch_only_the_pci_list_and_are_idempotent(config, wanted):
    text, specs = config
    for state in ("present", "absent", "exact"):
        # the file's own devices, declared again: nothing to do, not a byte changed
        if state != "absent":
            assert edit_pci_config(text, specs, state).text == text
        edit = edit_pci_config(text, wanted, state)
        # everything outside the pci value is kept
        before = XlConfig.parse(text).last("pci").value
        after = XlConfig.parse(edit.text).last("pci").value
        assert edit.text[:after.start] == text[:before.start]
        assert edit.text[after.end:] == text[before.end:]
        # a second run changes nothing
        again = edit_pci_config(edit.text, wanted, state)
        assert again.text == edit.text and not again.changed


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(list("pci =[]',\"#\n\t\\;+0a1x.P\r") + ["0000:03:00.0", "'03:00.0'"]), max_size=30).map("".join))
def test_any_text_parses_or_fails_with_a_position(text):
    try:
        edit_pci_config(text, ["03:00.0"], "present")
    except XlConfigError as exc:
        assert exc.details["line"] >= 1 and exc.details["column"] >= 1
    except SpecError as exc:
        assert "PCI spec" in exc.msg or "pci" in exc.msg

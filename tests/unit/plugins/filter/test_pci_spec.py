# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PCI spec filters: called directly, and through a real ansible-playbook run."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.xen.pci.plugins.filter import pci_spec as plugin
from ansible_collections.xen.pci.plugins.filter.pci_spec import (
    FilterModule, pci_bdf, pci_selected, pci_spec, pci_spec_format, pci_xs_key,
)


def test_filter_names():
    assert FilterModule().filters() == {"pci_spec": pci_spec, "pci_spec_format": pci_spec_format,
                                        "pci_bdf": pci_bdf, "pci_xs_key": pci_xs_key, "pci_selected": pci_selected}


def test_pci_selected_replaces_selectors_by_their_addresses():
    specs = ["0000:00:02.0", {"select": {"id": "8086:100e"}, "count": "all", "permissive": True}, {"name": "gpu0"}]
    selected = [{"entry": 1, "select": {"id": "8086:100e"}, "count": "all", "bdfs": ["0000:01:00.0", "0000:00:1d.0"]}]
    assert pci_selected(specs, selected) == [
        "0000:00:02.0", {"permissive": True, "bdf": "0000:01:00.0"}, {"permissive": True, "bdf": "0000:00:1d.0"},
        {"name": "gpu0"}]
    assert pci_selected(["03:00.0"], []) == ["03:00.0"]
    with pytest.raises(AnsibleFilterError, match="entry #0 is a selector"):
        pci_selected([{"select": {"label": "x"}}], [])


@pytest.mark.parametrize("value,expected", [
    ("0000:03:00.0@4,permissive=1",
     {"bdf": "0000:03:00.0", "name": None, "vslot": 4, "permissive": True, "msitranslate": False, "seize": False,
      "power_mgmt": False, "rdm_policy": "strict"}),
    ({"name": "gpu0"},
     {"bdf": None, "name": "gpu0", "vslot": None, "permissive": False, "msitranslate": False, "seize": False,
      "power_mgmt": False, "rdm_policy": "strict"}),
    ({"bdf": "3:0.*", "vslot": "1f", "rdm_policy": "RELAXED"},
     {"bdf": "0000:03:00.*", "name": None, "vslot": 31, "permissive": False, "msitranslate": False,
      "seize": False, "power_mgmt": False, "rdm_policy": "relaxed"}),
])
def test_pci_spec(value, expected):
    assert pci_spec(value) == expected


def test_pci_spec_unresolved():
    assert pci_spec("name=gpu0,vslot=1a,seize=1", resolve=False) == {"name": "gpu0", "vslot": 26, "seize": True}
    assert pci_spec({"bdf": "03:00.0", "permissive": None}, False) == {"bdf": "0000:03:00.0"}


@pytest.mark.parametrize("value,expected", [
    ("3:0.0@4,seize=1,permissive=1", "0000:03:00.0@04,permissive=1,seize=1"),
    ({"bdf": "03:00.0", "vslot": 4, "permissive": True}, "0000:03:00.0@04,permissive=1"),
    ({"name": "gpu0", "vslot": 3}, "name=gpu0,vslot=03"),
    ("bdf=0a:1f.7,rdm_policy=relaxed,", "0000:0a:1f.7,rdm_policy=relaxed"),
])
def test_pci_spec_format(value, expected):
    assert pci_spec_format(value) == expected
    assert pci_spec_format(expected) == expected


def test_pci_spec_format_with_defaults():
    assert pci_spec_format({"bdf": "03:00.*", "vslot": 5}, include_defaults=True) == \
        "0000:03:00.*@05,permissive=0,msitranslate=0,seize=0,power_mgmt=0,rdm_policy=strict"


@pytest.mark.parametrize("value,expected_bdf,expected_key", [
    ("3:0.1", "0000:03:00.1", "0000-03-00-1"),
    ("0000:0A:00.0", "0000:0a:00.0", "0000-0a-00-0"),
    ("0000-0a-1f-7", "0000:0a:1f.7", "0000-0a-1f-7"),
    ("0000:00:01.00", "0000:00:01.0", "0000-00-01-0"),
])
def test_addresses(value, expected_bdf, expected_key):
    assert pci_bdf(value) == expected_bdf
    assert pci_xs_key(value) == expected_key


@pytest.mark.parametrize("func,value,words", [
    (pci_spec, "03:00.0,bogus=1", ["'bogus' at column 9", "unknown key"]),
    (pci_spec, "03:00.0,permissive=yes", ["'yes' at column 20", "must be 0 or 1"]),
    (pci_spec, {"bdf": "03:00.0", "slot": 4}, ["unknown key(s) slot"]),
    (pci_spec, 42, ["expected a string or a mapping"]),
    (pci_spec_format, "03:20.0@4", ["'20' at column 4", "slot is out of range"]),
    (pci_spec_format, "03:00.0,name=x", ["'name' at column 9", "exclusive"]),
    (pci_bdf, "03:00.8", ["'8' at column 7", "function is out of range"]),
    (pci_bdf, "03:00.*", ["'*' at column 7"]),
    (pci_bdf, "0000-03-00-8", ["expected DDDD-BB-SS-F"]),
    (pci_xs_key, "gpu0", ["no function"]),
    (pci_xs_key, None, ["expected a string"]),
])
def test_errors_are_filter_errors_naming_the_token(func, value, words):
    with pytest.raises(AnsibleFilterError) as info:
        func(value)
    for word in words:
        assert word in str(info.value)


def _collections_root():
    # .../ansible_collections/xen/pci/plugins/filter/pci_spec.py -> the directory holding ansible_collections
    path = pathlib.Path(plugin.__file__)
    root = path.parents[5]
    if path.parents[4].name != "ansible_collections":
        pytest.skip("the collection is not laid out under ansible_collections/xen/pci: %s" % path)
    return root


def test_filters_in_a_real_playbook(tmp_path):
    """Render the filters through ansible-playbook: FQCN lookup, types, and the error text a user sees."""
    exe = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    if exe is None:
        pytest.skip("ansible-playbook is not installed")
    out = tmp_path / "out.json"
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent("""\
        - hosts: localhost
          connection: local
          gather_facts: false
          vars:
            devices:
              - "03:00.0@4,permissive=1"
              - {name: gpu0, vslot: "1f"}
          tasks:
            - name: A bad spec fails with the token named
              block:
                - ansible.builtin.debug:
                    msg: "{{ '03:00.0,permisive=1' | xen.pci.pci_spec }}"
              rescue:
                - ansible.builtin.set_fact:
                    bad_msg: "{{ ansible_failed_result.msg }}"
            - ansible.builtin.assert:
                that:
                  - (devices[0] | xen.pci.pci_spec).vslot == 4
                  - (devices[0] | xen.pci.pci_spec).permissive is true
                  - ('0000:0A:00.0' | xen.pci.pci_bdf) == ('0a:00.0' | xen.pci.pci_bdf)
            - ansible.builtin.copy:
                dest: "{{ out }}"
                content: "{{ {'specs': devices | map('xen.pci.pci_spec') | list,
                              'strings': devices | map('xen.pci.pci_spec_format') | list,
                              'key': '3:0.1' | xen.pci.pci_xs_key,
                              'bad': bad_msg} | to_json }}"
                mode: "0600"
        """))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(_collections_root()), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_HOME=str(tmp_path / "home"),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_RETRY_FILES_ENABLED="0")
    proc = subprocess.run([exe, "-i", "localhost,", str(playbook), "-e", "out=%s" % out],
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["specs"] == [
        {"bdf": "0000:03:00.0", "name": None, "vslot": 4, "permissive": True, "msitranslate": False, "seize": False,
         "power_mgmt": False, "rdm_policy": "strict"},
        {"bdf": None, "name": "gpu0", "vslot": 31, "permissive": False, "msitranslate": False, "seize": False,
         "power_mgmt": False, "rdm_policy": "strict"},
    ]
    assert result["strings"] == ["0000:03:00.0@04,permissive=1", "name=gpu0,vslot=1f"]
    assert result["key"] == "0000-03-00-1"
    assert "'permisive' at column 9: unknown key" in result["bad"]

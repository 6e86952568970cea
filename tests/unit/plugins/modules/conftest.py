# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs a module's main() with arguments, as Ansible would, for the module tests."""

from __future__ import annotations

import importlib
import json

import pytest


@pytest.fixture
def run_module(capsys):
    """``run_module(name, args)``: the module's JSON result, with ``rc`` (its exit status)."""
    testing = pytest.importorskip("ansible.module_utils.testing", reason="ansible-core 2.19+ is needed for patch_module_args")

    def run(name, args):
        module = importlib.import_module("ansible_collections.xen.pci.plugins.modules.%s" % name)
        with testing.patch_module_args(args):
            with pytest.raises(SystemExit) as info:
                module.main()
        out = json.loads(capsys.readouterr().out)
        out["rc"] = info.value.code
        return out
    return run

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Jinja2 filters for xl-pci-configuration(5) specs and PCI addresses.

The documentation of each filter is in the .yml file of the same name.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf, PciSpec
from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError
from ansible_collections.xen.pci.plugins.module_utils._selectors import expand_selected


def _address(value):
    # Bdf.parse reads [DDDD:]BB:SS.F; the /libxl/pci form DDDD-BB-SS-F has no ':'.
    if isinstance(value, str) and ":" not in value and "-" in value:
        return Bdf.from_xs_key(value)
    return Bdf.parse(value)


def pci_spec(value, resolve=True):
    """A spec string or mapping as the canonical mapping."""
    try:
        return PciSpec.coerce(value).to_dict(resolve=bool(resolve))
    except SpecError as exc:
        raise AnsibleFilterError(exc.msg) from None


def pci_spec_format(value, include_defaults=False):
    """A spec string or mapping as the canonical spec string."""
    try:
        return PciSpec.coerce(value).format(include_defaults=bool(include_defaults))
    except SpecError as exc:
        raise AnsibleFilterError(exc.msg) from None


def pci_bdf(value):
    """A PCI address as DDDD:BB:SS.F."""
    try:
        return str(_address(value))
    except SpecError as exc:
        raise AnsibleFilterError(exc.msg) from None


def pci_xs_key(value):
    """A PCI address as the /libxl/pci path component DDDD-BB-SS-F."""
    try:
        return _address(value).xs_key
    except SpecError as exc:
        raise AnsibleFilterError(exc.msg) from None


def pci_selected(specs, selected):
    """A spec list with its selectors replaced by the addresses chosen."""
    try:
        return expand_selected(specs, selected)
    except SpecError as exc:
        raise AnsibleFilterError(exc.msg) from None


class FilterModule:
    """xen.pci filters."""

    def filters(self):
        return {
            "pci_spec": pci_spec,
            "pci_spec_format": pci_spec_format,
            "pci_bdf": pci_bdf,
            "pci_xs_key": pci_xs_key,
            "pci_selected": pci_selected,
        }

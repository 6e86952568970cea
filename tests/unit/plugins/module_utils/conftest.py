# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures that run the hotplug core against a simulated Xen host (xensim)."""

from __future__ import annotations

import textwrap

import pytest


@pytest.fixture
def sim(tmp_path):
    """Factory: ``sim(yaml_text)`` starts a simulated host; all are stopped at the end."""
    xensim_host = pytest.importorskip("xensim.host", reason="xensim (tools/xensim) is not importable")
    xensim_scenario = pytest.importorskip("xensim.scenario", reason="xensim (tools/xensim) is not importable")
    hosts = []

    def start(text, **kwargs):
        scenario = xensim_scenario.loads(textwrap.dedent(text))
        host = xensim_host.SimHost(scenario, str(tmp_path / ("host%d" % len(hosts))), **kwargs)
        host.start()
        hosts.append(host)
        return host

    yield start
    for host in reversed(hosts):
        host.stop()

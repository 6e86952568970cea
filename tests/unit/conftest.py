# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Makes the simulator (tools/xensim, a test tool outside the collection's
Python namespace) importable as ``xensim`` for the unit tests that run the
hotplug core against a simulated host."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
from hypothesis import settings

# No per-example deadline for the property tests: on the shared 2-core CI
# machine (units beside the matrix's other jobs) a 1 ms example once took
# 377 ms and failed hypothesis's default 200 ms deadline. What they check is
# the results, not the timing.
settings.register_profile('xen-pci', deadline=None)
settings.load_profile('xen-pci')

XENSIM_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'tools', 'xensim')

if not os.path.isfile(os.path.join(XENSIM_DIR, 'xensim', '__init__.py')):
    # Fail loudly: tests that need the simulator would otherwise skip silently.
    raise ImportError('the simulator package is missing: %s/xensim/__init__.py' % XENSIM_DIR)

if XENSIM_DIR not in sys.path:
    sys.path.insert(0, XENSIM_DIR)


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


def sim_params(host, **extra):
    """Module parameters (host options and the passthrough/assignable
    defaults) that point the runners at a simulated host."""
    from ansible_collections.xen.pci.plugins.module_utils._host_options import host_defaults  # pylint: disable=import-outside-toplevel
    p = host_defaults(xenstore_path=host.paths["xenstored"], sysfs_root=host.paths["sysfs_root"],
                      hypervisor="xensim:" + host.paths["hypervisor"], userdata_dir=host.paths["userdata_dir"],
                      qmp_dir=host.paths["qmp_dir"], timeout=30.0)
    p.update(state="present", make_assignable=False, force=False, rebind=True, names="keep")
    p.update(extra)
    return p


@pytest.fixture
def params_of():
    """``params_of(host, **extra)``: runner parameters for a simulated host."""
    return sim_params


@pytest.fixture
def run(params_of):
    """``run(host, {domain: specs}, platform=None, **params)``: the passthrough
    runner on a simulated host (timeout 20 s unless given)."""
    from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough  # pylint: disable=import-outside-toplevel

    def call(host, desired, platform=None, **extra):
        extra.setdefault("timeout", 20.0)
        return run_passthrough(params_of(host, **extra), desired, platform=platform)
    return call

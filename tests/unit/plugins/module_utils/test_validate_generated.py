# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Generated malformed inputs (hypothesis) through the module runners.

Each example breaks one option of a request that is otherwise valid, and
must be rejected cleanly: an error of the core (never another exception),
no xenstore write at all, and a message naming the input that was wrong.
The totals are printed at the end of the run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the controller venv (requirements/controller.txt)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf, PciSpec  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError, XenPciError  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._host_options import host_defaults  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._runner_info import run_info  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough  # noqa: E402

HOST = """
name: generated-inputs
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:00:11.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000}
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true, devices: ["0000:00:10.0"]}
  - {domid: 2, name: db, type: pv, state: running, pcifront: true}
  - {domid: 3, name: pvh1, type: pvh, state: running}
"""
EXAMPLES = 180          # per test below; 7 tests, well over 1,000 inputs in all
TOTALS = {"tried": 0, "rejected": 0, "writes": 0}


def _bad_float(x):
    return not (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 1 <= x <= 3600)


BAD_TIMEOUT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(_bad_float),
                        st.integers().filter(_bad_float), st.booleans(), st.text(max_size=8), st.none(),
                        st.lists(st.integers(), max_size=2))
NOT_BOOL = st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=8), st.none(), st.lists(st.booleans(), max_size=2))


def _not_a_spec(text):
    try:
        PciSpec.parse(text)
    except SpecError:
        return True
    return False


def _not_a_bdf(text):
    try:
        Bdf.parse(text)
    except SpecError:
        return True
    return False


BAD_SPEC = st.one_of(
    st.text(max_size=40).filter(_not_a_spec),
    st.from_regex(r"\A[0-9a-f]{1,5}:[0-9a-g]{1,3}\.[0-9*x]\Z").filter(_not_a_spec),
    st.dictionaries(st.sampled_from(["bdf", "vslot", "permissive", "name", "rdm_policy", "seize", "colour"]),
                    st.one_of(st.integers(-5, 300), st.text(max_size=6), st.none(), st.booleans()), min_size=1)
    .filter(lambda d: _not_a_dict_spec(d)),  # pylint: disable=unnecessary-lambda  # defined below
    st.integers(), st.floats(), st.lists(st.text(max_size=4), max_size=2))


def _not_a_dict_spec(value):
    try:
        PciSpec.coerce(value)
    except SpecError:
        return True
    return False


def _unknown_name(text):
    """Not a guest of HOST, by name or by id."""
    return bool(text) and text not in ("web", "db", "pvh1", "Domain-0") and not re.match(r"[0-9]+\Z", text)


BAD_DOMAIN = st.one_of(st.booleans(), st.floats(), st.none(), st.tuples(st.integers()), st.just(""),
                       st.integers(min_value=4), st.integers(max_value=-1),
                       st.text(min_size=257, max_size=300), st.text(max_size=12).filter(_unknown_name))


@pytest.fixture
def host():
    """One simulated host for every example of a test (short socket paths
    under /tmp). Per test, not per module: ansible-test runs each test in a
    forked child, where a module's host would start again and never be
    stopped, its sysfs FUSE mount left behind."""
    xensim_host = pytest.importorskip("xensim.host", reason="xensim (tools/xensim) is not importable")
    xensim_scenario = pytest.importorskip("xensim.scenario", reason="xensim (tools/xensim) is not importable")
    state = tempfile.mkdtemp(prefix="xg-", dir="/tmp")
    started = xensim_host.SimHost(xensim_scenario.loads(HOST), state)
    started.start()
    yield started
    started.stop()
    shutil.rmtree(state, ignore_errors=True)


# Totals of every test, appended here and summed by tools/make/units.sh
# (pytest-xdist spreads the tests over processes, so no one of them sees all).
REPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), *([os.pardir] * 3), "output", "generated-inputs.jsonl")


@pytest.fixture(autouse=True)
def totals(request):
    start = dict(TOTALS)
    yield TOTALS
    mine = {k: TOTALS[k] - start[k] for k in TOTALS}
    os.makedirs(os.path.dirname(REPORT), exist_ok=True)
    with open(REPORT, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(mine, test=request.node.name)) + "\n")
    assert mine["writes"] == 0 and mine["rejected"] == mine["tried"] and mine["tried"] > 0, mine


def toolstack_writes(host):
    return sum(1 for e in host.call(lambda: list(host.store.access_log))
               if e.label.startswith("A") and e.op in ("write", "mkdir", "rm", "setperms"))


def params(host, **extra):
    p = host_defaults(xenstore_path=host.paths["xenstored"], sysfs_root=host.paths["sysfs_root"],
                      hypervisor="xensim:" + host.paths["hypervisor"], userdata_dir=host.paths["userdata_dir"],
                      qmp_dir=host.paths["qmp_dir"], timeout=10.0)
    p.update(state="present", make_assignable=False, force=False, rebind=True, names="keep")
    p.update(extra)
    return p


def rejected(host, run, names):
    """``run()`` must raise an error of the core naming one of ``names`` and write nothing."""
    TOTALS["tried"] += 1
    before = toolstack_writes(host)
    with pytest.raises(XenPciError) as info:
        run()
    writes = toolstack_writes(host) - before
    TOTALS["writes"] += writes
    assert writes == 0, info.value.msg
    where = " ".join(str(v) for v in (info.value.details.get("input"), info.value.details.get("domain"), info.value.msg))
    assert any(name in where for name in names), (names, info.value.msg, info.value.details.get("input"))
    TOTALS["rejected"] += 1


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                 HealthCheck.too_slow])


@SETTINGS
@given(value=BAD_TIMEOUT, runner=st.sampled_from(["passthrough", "assignable", "info"]))
def test_timeouts(host, value, runner):
    p = params(host, timeout=value)
    runs = {"passthrough": lambda: run_passthrough(p, {"db": ["00:11.0"]}),
            "assignable": lambda: run_assignable(dict(p, devices=["00:11.0"])),
            "info": lambda: run_info(p)}
    rejected(host, runs[runner], ["timeout"])


@SETTINGS
@given(name=st.sampled_from(["state", "make_assignable", "force", "take_from_driver"]), data=st.data())
def test_passthrough_options(host, name, data):
    if name == "state":
        value = data.draw(st.one_of(st.text(max_size=10).filter(lambda s: s not in ("present", "absent", "exact")), NOT_BOOL))
    elif name == "take_from_driver":
        value = data.draw(st.one_of(st.booleans(), st.integers(), st.text(min_size=1, max_size=6),
                                    st.lists(st.text(max_size=12).filter(_not_a_bdf), min_size=1, max_size=3)))
    else:
        value = data.draw(NOT_BOOL)
    rejected(host, lambda: run_passthrough(params(host, **{name: value}), {"db": ["00:11.0"]}), [name])


@SETTINGS
@given(spec=BAD_SPEC, position=st.integers(0, 2), where=st.sampled_from(["devices", "assignments"]))
def test_device_specs(host, spec, position, where):
    specs = ["00:11.0"]
    specs.insert(min(position, len(specs)), spec)

    def run():
        if where == "devices":
            return run_passthrough(params(host, domain="db", devices=specs), {"db": specs})
        return run_passthrough(params(host), {"db": specs, "web": ["00:10.0"]})
    rejected(host, run, ["devices", "assignments", "db"])


@SETTINGS
@given(ref=BAD_DOMAIN)
def test_domains(host, ref):
    rejected(host, lambda: run_passthrough(params(host), {ref: ["00:11.0"]}), ["domain", "assignments", repr(ref)[:20]])


@SETTINGS
@given(value=st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=10),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_assignment_values(host, value):
    rejected(host, lambda: run_passthrough(params(host), {"db": value}), ["db"])


@SETTINGS
@given(spec=st.sampled_from(["00:11.0", "0000:00:11.0", "00:11.0,permissive=1", "0:11.0@3", "00:12.0,seize=1"]),
       other=st.sampled_from(["db", "web"]))
def test_duplicates_and_conflicts(host, spec, other):
    """The same device twice in one guest, or in two guests (refused before any write)."""
    same = spec.split(",")[0].split("@")[0]
    desired = {"db": [spec, same]} if other == "db" else {"db": [spec], "web": [same]}
    rejected(host, lambda: run_passthrough(params(host), desired), ["db", "web", "assignments"])


@SETTINGS
@given(name=st.sampled_from(["devices", "state", "names", "rebind", "take_from_driver"]), data=st.data())
def test_assignable_options(host, name, data):
    values = {"devices": st.one_of(st.none(), st.integers(), st.text(max_size=8), st.lists(BAD_SPEC, min_size=1, max_size=3)),
              "state": st.text(max_size=8).filter(lambda s: s not in ("present", "absent")),
              "names": st.text(max_size=8).filter(lambda s: s not in ("keep", "exact"))}
    value = data.draw(values.get(name, NOT_BOOL))
    p = dict(params(host), devices=["00:11.0"])
    p[name] = value
    if name == "devices" and isinstance(value, list) and any(isinstance(v, dict) and set(v) <= {"bdf", "name"}
                                                             and not _not_a_dict_spec(v) for v in value):
        return
    rejected(host, lambda: run_assignable(p), [name])

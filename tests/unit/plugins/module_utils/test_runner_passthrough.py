# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The passthrough module's runner against xensim: check mode predicts, reruns change nothing."""

from __future__ import annotations

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import RefusedError, SpecError
from ansible_collections.xen.pci.plugins.module_utils._host_options import HOST_ARGS, platform_from
from ansible_collections.xen.pci.plugins.module_utils._runner_info import run_info
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough

HOST = """
name: runner-host
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:00:11.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000}
  - {bdf: "0000:00:13.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: null}
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true}
  - {domid: 2, name: db, type: pv, state: running, pcifront: true, devices: ["0000:00:11.0"]}
  - {domid: 3, name: pvh1, type: pvh, state: running}
"""


def params_for(host, **extra):
    p = {k: v.get("default") for k, v in HOST_ARGS.items()}
    p.update(xenstore_path=host.paths["xenstored"], sysfs_root=host.paths["sysfs_root"],
             hypervisor="xensim:" + host.paths["hypervisor"], userdata_dir=host.paths["userdata_dir"], timeout=30.0,
             state="present", make_assignable=False, force=False)
    p.update(extra)
    return p


def writes_of(platform):
    return platform.xs.stats.writes


def four_steps(params, desired):
    """check, real, idempotent, idempotent-check; each on a fresh connection."""
    check = run_passthrough(params, desired, check_mode=True)
    real = run_passthrough(params, desired)
    platform = platform_from(params)
    again = run_passthrough(params, desired, platform=platform)
    again_writes = writes_of(platform)
    again_check = run_passthrough(params, desired, check_mode=True)
    return check, real, again, again_writes, again_check


def test_four_steps_attach_and_exact(sim):
    host = sim(HOST)
    params = params_for(host)
    check, real, again, again_writes, again_check = four_steps(params, {"web": ["00:10.0"]})
    assert check["changed"] and real["changed"]
    assert check["diff"] == real["diff"]
    assert check["diff"]["after"]["web (domid 1)"] == ["0000:00:10.0"]
    assert [d["bdf"] for d in real["domains"]["web"]["devices"]] == ["0000:00:10.0"]
    assert real["domains"]["web"]["devices"][0]["vdev"] == "0000:00:00.00"
    assert not again["changed"] and not again_check["changed"] and again_writes == 0

    exact = params_for(host, state="exact")
    check, real, again, again_writes, again_check = four_steps(exact, {"web": ["00:10.0"], "db": []})
    assert check["changed"] and real["changed"] and check["diff"] == real["diff"]
    assert real["domains"]["db"]["devices"] == []
    assert not again["changed"] and again_writes == 0 and not again_check["changed"]


def test_options_that_differ_are_reattached_and_reported(sim):
    host = sim(HOST)
    run_passthrough(params_for(host), {"web": ["00:10.0"]})
    result = run_passthrough(params_for(host), {"web": ["00:10.0,permissive=1"]})
    assert result["changed"]
    assert result["reattached"] == [{"domain": "web (domid 1)", "bdf": "0000:00:10.0", "differs": {"permissive": [False, True]}}]
    assert result["domains"]["web"]["devices"][0]["opts"]["permissive"] is True
    assert result["diff"] == {"before": {"web (domid 1)": ["0000:00:10.0"]}, "after": {"web (domid 1)": ["0000:00:10.0,permissive=1"]}}


def test_refusals_are_predicted_by_check_mode_and_come_before_any_change(sim):
    host = sim(HOST)
    with pytest.raises(RefusedError, match="PVH"):
        run_passthrough(params_for(host), {"pvh1": ["00:10.0"]}, check_mode=True)
    with pytest.raises(RefusedError, match="e1000"):
        run_passthrough(params_for(host), {"web": ["00:12.0"]}, check_mode=True)
    with pytest.raises(RefusedError, match="PVH"):
        run_passthrough(params_for(host, state="exact"), {"web": ["00:10.0"], "pvh1": ["00:13.0"]})
    assert run_info(params_for(host))["domains"]["web"]["devices"] == []


def test_absent_and_failures(sim):
    host = sim(HOST)
    params = params_for(host, state="absent")
    result = run_passthrough(params, {"db": ["00:11.0"]})
    assert result["changed"] and result["domains"]["db"]["devices"] == []
    assert not run_passthrough(params, {"db": ["00:11.0"]})["changed"]
    with pytest.raises(SpecError, match="invalid PCI spec"):
        run_passthrough(params_for(host), {"web": ["00:1g.0"]})
    with pytest.raises(Exception, match="does not exist on this host"):
        run_passthrough(params_for(host), {"nosuch": ["00:10.0"]})
    with pytest.raises(RefusedError, match="PVH"):
        run_passthrough(params_for(host), {"pvh1": ["00:10.0"]})
    with pytest.raises(RefusedError, match="e1000"):
        run_passthrough(params_for(host), {"web": ["00:12.0"]})


def test_device_of_another_domain_is_refused_naming_it(sim):
    host = sim(HOST)
    with pytest.raises(RefusedError, match=r"0000:00:11.0 is assigned to db \(domid 2\)"):
        run_passthrough(params_for(host), {"web": ["00:11.0"]})


def test_make_assignable_binds_a_driverless_device_first(sim):
    host = sim(HOST)
    with pytest.raises(RefusedError):
        run_passthrough(params_for(host), {"web": ["00:13.0"]})
    result = run_passthrough(params_for(host, make_assignable=True), {"web": ["00:13.0"]})
    assert result["changed"]
    assert any("bind 0000:00:13.0 to pciback" in a for a in result["actions"])
    info = run_info(params_for(host))
    dev = [d for d in info["devices"] if d["bdf"] == "0000:00:13.0"][0]
    assert dev["driver"] == "pciback" and dev["assigned_to"] == 1


def test_twenty_domains_in_one_call_and_a_noop_rerun_writes_nothing(sim):
    devices = "\n".join('  - {bdf: "0000:01:%02x.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}' % i
                        for i in range(20))
    domains = "\n".join("  - {domid: %d, name: g%02d, type: pv, state: running, pcifront: true}" % (i + 1, i)
                        for i in range(20))
    host = sim("name: twenty\ndevices:\n%s\ndomains:\n%s\n" % (devices, domains))
    assignments = {"g%02d" % i: ["0000:01:%02x.0" % i] for i in range(20)}
    params = params_for(host, state="exact")
    first = run_passthrough(params, assignments)
    assert first["changed"] and len(first["domains"]) == 20
    platform = platform_from(params)
    rerun = run_passthrough(params, assignments, platform=platform)
    assert not rerun["changed"]
    assert platform.xs.stats.writes == 0
    assert platform.xs.stats.round_trips == 3


def test_info_reports_inventory_and_assignments(sim):
    host = sim(HOST)
    info = run_info(params_for(host))
    assert info["assignable"] == ["0000:00:10.0"]
    by_bdf = {d["bdf"]: d for d in info["devices"]}
    assert by_bdf["0000:00:11.0"]["assigned_to_name"] == "db"
    assert by_bdf["0000:00:12.0"]["driver"] == "e1000"
    assert info["domains"]["db"]["backend"]["state"] == 4


def test_a_device_moves_between_guests_in_one_exact_call(sim):
    host = sim(HOST)
    params = params_for(host, state="exact")
    check = run_passthrough(params, {"db": [], "web": ["00:11.0"]}, check_mode=True)
    real = run_passthrough(params, {"db": [], "web": ["00:11.0"]})
    assert check["diff"] == real["diff"]
    assert real["actions"].index(next(a for a in real["actions"] if "0000:00:11.0" in a and "db" in a)) < \
        real["actions"].index(next(a for a in real["actions"] if "0000:00:11.0" in a and "web" in a))
    assert [d["bdf"] for d in real["domains"]["web"]["devices"]] == ["0000:00:11.0"]


def test_info_summary_reads_a_link_per_device_and_reports_ownership(sim):
    host = sim(HOST)
    full = run_info(params_for(host))
    summary = run_info(params_for(host, detail="summary"))
    keys = ("bdf", "driver", "pciback_slot", "assignable", "assignable_now", "assigned_to", "assigned_to_name", "name",
            "remembered_driver")
    assert [{k: d[k] for k in keys} for d in summary["devices"]] == [{k: d[k] for k in keys} for d in full["devices"]]
    assert set(summary["devices"][0]) == set(keys)
    assert summary["domains"] == full["domains"] and summary["assignable"] == full["assignable"]
    with pytest.raises(SpecError, match="detail must be one of full, summary"):
        run_info(params_for(host, detail="brief"))


def test_a_deadline_where_no_step_names_the_guest_is_reported_with_its_label(sim):
    """The re-read under the locks or the journal's removal can run out of
    time; the error still says which guest the request was for."""
    from ansible_collections.xen.pci.plugins.module_utils._errors import DeadlineExceeded  # pylint: disable=import-outside-toplevel
    host = sim(HOST)

    def late(_point):
        raise DeadlineExceeded("timed out after 0.0 s waiting for xenstored to answer RM /tool/xen-pci/journal/dom-1")
    with pytest.raises(DeadlineExceeded) as caught:
        run_passthrough(params_for(host), {"web": ["00:10.0"]}, hook=late)
    assert caught.value.msg.startswith("web (domid 1): timed out after 0.0 s")
    assert caught.value.msg.count("web (domid 1)") == 1


def test_one_request_reads_each_devices_reset_and_the_hosts_readiness_once(sim, monkeypatch):
    """The validation runs before and under the locks; the hardware facts
    (reset, header type) and the hypervisor's readiness are read in the first
    pass only, and every device to attach is still checked."""
    # pylint: disable=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils import _readiness, _validate
    host = sim(HOST)
    calls = {"reset": [], "refusal": [], "readiness": 0}
    real_reset, real_refusal, real_ready = _validate.reset_report, _readiness.assign_refusal, _readiness.host_readiness

    def reset_report(sysfs, bdf):
        calls["reset"].append(bdf)
        return real_reset(sysfs, bdf)

    def assign_refusal(sysfs, bdf, readiness):
        calls["refusal"].append(bdf)
        return real_refusal(sysfs, bdf, readiness)

    def host_readiness(platform):
        calls["readiness"] += 1
        return real_ready(platform)
    monkeypatch.setattr(_validate, "reset_report", reset_report)
    monkeypatch.setattr(_readiness, "assign_refusal", assign_refusal)
    monkeypatch.setattr(_readiness, "host_readiness", host_readiness)
    result = run_passthrough(params_for(host, make_assignable=True), {"web": ["00:10.0", "00:13.0"]})
    assert result["changed"] and sorted(d["bdf"] for d in result["domains"]["web"]["devices"]) == ["0000:00:10.0", "0000:00:13.0"]
    assert sorted(calls["reset"]) == ["0000:00:10.0", "0000:00:13.0"]
    assert sorted(calls["refusal"]) == ["0000:00:10.0", "0000:00:13.0"]
    assert calls["readiness"] == 1

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""xen.pci.plan through AnsibleModule, against xensim: its argument spec,
a result that never says changed, and failures as fail_json."""

from __future__ import annotations


HOST = """
name: plan-module-host
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000}
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true}
"""


def host_args(host):
    return {"xenstore_path": host.paths["xenstored"], "sysfs_root": host.paths["sysfs_root"],
            "hypervisor": "xensim:" + host.paths["hypervisor"], "userdata_dir": host.paths["userdata_dir"],
            "qmp_dir": host.paths["qmp_dir"], "timeout": 30}


def test_module_plans_in_check_mode_and_for_real_alike_and_never_changes(sim, tmp_path, run_module):
    host = sim(HOST)
    args = dict(host_args(host), assignments={"web": ["00:10.0"]}, config_dir=str(tmp_path), config_create=True)
    check = run_module("plan", dict(args, _ansible_check_mode=True))
    real = run_module("plan", args)
    for result in (check, real):
        assert result["rc"] == 0 and result["changed"] is False and result["changes"] is True
        assert result["why"] == ["attach 0000:00:10.0 to web (domid 1)", "config file: %s/web.cfg" % tmp_path]
        assert result["domains"]["web"]["devices"] == []
    assert not (tmp_path / "web.cfg").exists()


def test_module_failures_name_the_input_and_the_device(sim, run_module):
    host = sim(HOST)
    held = run_module("plan", dict(host_args(host), assignments={"web": ["00:12.0"]}))
    assert held["rc"] == 1 and held["failed"] and held["device"] == "0000:00:12.0"
    assert "in use by the dom0 driver e1000" in held["msg"]
    missing = run_module("plan", host_args(host))
    assert missing["rc"] == 1 and "assignments" in missing["msg"]

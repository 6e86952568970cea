# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""xen.pci.domain_config on real files: the runner, then the module itself."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError
from ansible_collections.xen.pci.plugins.module_utils._runner_domain_config import run_domain_config, run_domain_configs
from ansible_collections.xen.pci.plugins.module_utils._xlconfig import XlConfigError

CONFIG = """\
# web1: a PV guest
name = "web1"
type = "pv"
memory = 2048
vcpus = 2
disk = [ 'phy:/dev/vg0/web1,xvda,w' ]
vif = [ 'bridge=xenbr0' ]   # one NIC
pci = [ '0000:03:00.0' ]
"""


def params_for(path, **extra):
    p = dict(path=str(path), devices=None, state="present", passthrough=None, e820_host=None, pci_permissive=None,
             pci_msitranslate=None, pci_power_mgmt=None, pci_seize=None, backup=False, create=False)
    p.update(extra)
    return p


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "web1.cfg"
    path.write_text(CONFIG)
    os.chmod(path, 0o640)
    return path


def test_four_steps_on_a_file(cfg):
    params = params_for(cfg, devices=["0000:03:00.0", "04:00.0,permissive=1"], passthrough="enabled")
    check = run_domain_config(params, check_mode=True)
    assert check["changed"] and cfg.read_text() == CONFIG    # check mode writes nothing
    real = run_domain_config(params)
    assert real["changed"] and check["diff"] == real["diff"] and check["actions"] == real["actions"]
    expected = CONFIG.replace("pci = [ '0000:03:00.0' ]\n",
                              "pci = [ '0000:03:00.0', '0000:04:00.0,permissive=1' ]\npassthrough = 'enabled'\n")  # the file's usual quote
    assert cfg.read_text() == expected
    assert real["diff"]["before"] == CONFIG and real["diff"]["after"] == expected
    assert real["devices"] == ["0000:03:00.0", "0000:04:00.0,permissive=1"]
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o640      # the mode survives the rename
    assert sorted(os.listdir(cfg.parent)) == ["web1.cfg"]    # no temporary file left behind
    mtime = os.stat(cfg).st_mtime_ns
    again = run_domain_config(params)
    again_check = run_domain_config(params, check_mode=True)
    assert not again["changed"] and not again_check["changed"] and again["actions"] == []
    assert os.stat(cfg).st_mtime_ns == mtime                 # not rewritten


def test_backup_and_absent(cfg):
    result = run_domain_config(params_for(cfg, devices=["03:00.0"], state="absent", backup=True))
    assert result["changed"] and "pci = [ ]" not in cfg.read_text()
    assert "pci = []\n" in cfg.read_text()
    backup = result["backup_file"]
    assert os.path.dirname(backup) == str(cfg.parent) and open(backup).read() == CONFIG
    assert "backup_file" not in run_domain_config(params_for(cfg, devices=["03:00.0"], state="absent", backup=True))


def test_missing_file_needs_create(tmp_path):
    path = tmp_path / "new.cfg"
    with pytest.raises(SpecError, match="does not exist; set create"):
        run_domain_config(params_for(path, devices=["03:00.0"]))
    check = run_domain_config(params_for(path, devices=["03:00.0"], create=True), check_mode=True)
    assert check["changed"] and not path.exists() and check["actions"][0] == "create %s" % path
    result = run_domain_config(params_for(path, devices=["03:00.0"], create=True, e820_host=True))
    assert path.read_text() == 'pci = ["0000:03:00.0"]\ne820_host = 1\n'
    assert result["diff"]["before_header"] == "/dev/null"
    assert not run_domain_config(params_for(path, devices=["03:00.0"], create=True, e820_host=True))["changed"]


def test_malformed_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "bad.cfg"
    path.write_text("name = 'x'\npci = [ '03:00.0'\nmemory = 1\n")
    with pytest.raises(XlConfigError, match=r"bad.cfg: line 3, column 1: expected ',' or '\]'"):
        run_domain_config(params_for(path, devices=["04:00.0"]))
    assert path.read_text() == "name = 'x'\npci = [ '03:00.0'\nmemory = 1\n"


def test_non_utf8_bytes_survive(tmp_path):
    path = tmp_path / "latin1.cfg"
    raw = b"# caf\xe9 server\nname = 'x'\n"
    path.write_bytes(raw)
    run_domain_config(params_for(path, devices=["03:00.0"]))
    assert path.read_bytes() == raw + b"pci = ['0000:03:00.0']\n"


# -- the module, through AnsibleModule ------------------------------------------


def test_module_check_diff_and_apply(cfg, run_module):
    args = {"path": str(cfg), "devices": ["05:00.0@2"], "state": "present", "pci_permissive": True}
    check = run_module("domain_config", dict(args, _ansible_check_mode=True, _ansible_diff=True))
    assert check["rc"] == 0 and check["changed"] and cfg.read_text() == CONFIG
    assert check["diff"]["after"].endswith("pci = [ '0000:03:00.0', '0000:05:00.0@02' ]\npci_permissive = 1\n")
    real = run_module("domain_config", dict(args, backup=True))
    assert real["changed"] and "diff" not in real and os.path.exists(real["backup_file"])
    assert cfg.read_text() == check["diff"]["after"]
    again = run_module("domain_config", dict(args, _ansible_check_mode=True))
    assert not again["changed"]


def test_module_reports_errors_with_fail_json(cfg, run_module):
    failed = run_module("domain_config", {"path": str(cfg), "devices": ["03:00.g"]})
    assert failed["failed"] and failed["rc"] == 1 and "device #0: invalid PCI spec" in failed["msg"]
    assert failed["error"] == "SpecError"
    mode = run_module("domain_config", {"path": str(cfg), "mode": "0600"})
    assert mode["changed"] and stat.S_IMODE(os.stat(cfg).st_mode) == 0o600


# -- several files in one task (configs) --------------------------------------


def test_several_files_in_one_call_each_with_its_own_options(tmp_path):
    web, db = tmp_path / "web1.cfg", tmp_path / "db1.cfg"
    web.write_text(CONFIG)
    configs = [{"path": str(web), "devices": ["0000:03:00.0", "04:00.0"]},
               {"path": str(db), "devices": ["05:00.0@3"], "create": True, "pci_permissive": True}]
    params = dict(params_for(web, state="exact"), path=None, configs=configs)
    check = run_domain_configs(params, check_mode=True)
    assert check["changed"] and web.read_text() == CONFIG and not db.exists()
    real = run_domain_configs(params)
    assert real["actions"] == check["actions"] and [r["changed"] for r in real["results"]] == [True, True]
    assert [r["devices"] for r in real["results"]] == [["0000:03:00.0", "0000:04:00.0"], ["0000:05:00.0@03"]]
    assert db.read_text() == 'pci = ["0000:05:00.0@03"]\npci_permissive = 1\n'
    assert len(real["diff"]) == 2 and real["diff"][1]["before_header"] == "/dev/null"
    again = run_domain_configs(params)
    assert not again["changed"] and again["diff"] == [] and again["actions"] == []


def test_one_bad_file_means_no_file_is_written(tmp_path):
    web, bad = tmp_path / "web1.cfg", tmp_path / "bad.cfg"
    web.write_text(CONFIG)
    bad.write_text("pci = [ '0000:03:00.0' ]\npci += [ '0000:04:00.0' ]\n")
    configs = [{"path": str(web), "devices": ["06:00.0"]}, {"path": str(bad), "devices": ["06:00.0"]}]
    params = dict(params_for(web), path=None, configs=configs)
    with pytest.raises(XlConfigError, match=str(bad)):
        run_domain_configs(params)
    assert web.read_text() == CONFIG
    for configs, pattern in (([], "non-empty list"), ([{"devices": []}], r"configs\[0\]: path is required"),
                             ([{"path": str(web), "colour": 1}], r"configs\[0\]: unknown key"),
                             ([{"path": str(web)}, {"path": str(web)}], r"configs\[1\]: .* is also configs\[0\]")):
        with pytest.raises(SpecError, match=pattern):
            run_domain_configs(dict(params, configs=configs))


def test_module_with_configs_applies_file_attributes_to_every_file(tmp_path, run_module):
    web, db = tmp_path / "web1.cfg", tmp_path / "db1.cfg"
    web.write_text(CONFIG)
    db.write_text(CONFIG.replace("web1", "db1"))
    args = {"configs": [{"path": str(web), "devices": ["03:00.0"]}, {"path": str(db)}], "mode": "0600",
            "_ansible_diff": True}
    out = run_module("domain_config", args)
    assert out["rc"] == 0 and out["changed"] and [r["changed"] for r in out["results"]] == [True, True]
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in (web, db))
    assert run_module("domain_config", {"path": str(web), "configs": [{"path": str(db)}]})["failed"]

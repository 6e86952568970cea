"""Scenario files: validation with errors naming the field, normalisation."""

import pytest

from xensim import scenario as sc
from xensim.scenario import ScenarioError

BASE = """
name: t
devices:
  - {bdf: "10.0", vendor: 0x1234, device: 0x11e8, driver: pciback}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, driver: e1000}
domains:
  - {domid: 1, name: a, devices: ["00:10.0"]}
"""


def test_shipped_scenarios_load():
    names = {p.stem for p in sc.shipped()}
    assert {"pv-no-backend", "pv-with-backend", "pv-paused", "hvm-stubdom", "hvm-dom0-qemu",
            "mixed-host", "demo"} <= names
    for path in sc.shipped():
        s = sc.load(path)
        assert s.name == path.stem


def test_normalisation_and_defaults():
    with pytest.raises(ScenarioError, match=r"devices\[0\]\.bdf: '10.0' is not a BDF"):
        sc.loads(BASE)
    s = sc.loads(BASE.replace('"10.0"', '"00:10.0"'))
    assert [d.bdf for d in s.devices] == ["0000:00:10.0", "0000:00:12.0"]
    dom = s.domain(1)
    assert dom.devices == ["0000:00:10.0"] and dom.type == "pv" and dom.pcifront and dom.state == "running"
    # Deterministic uuid from domid and name.
    assert dom.uuid == sc.loads(BASE.replace('"10.0"', '"00:10.0"')).domain(1).uuid
    assert sc.normalise_bdf("1:2:3.4") == "0001:02:03.4"
    assert sc.bdf_to_xs("0000:00:10.0") == "0000-00-10-0"


@pytest.mark.parametrize("edit, message", [
    (("device: 0x11e8, driver: pciback", "driver: pciback"), r"devices\[0000:00:10.0\]\.device: missing"),
    (('devices: ["00:10.0"]', 'devices: ["00:12.0"]'), r"domains\[1\]\.devices: 0000:00:12.0 is not bound to pciback"),
    (('devices: ["00:10.0"]', 'devices: ["00:1f.0"]'), r"domains\[1\]\.devices: 0000:00:1f.0 is not in devices"),
    (("name: a,", "name: a, type: hvm, pcifront: true,"), r"domains\[1\]\.pcifront: xen-pcifront only runs in PV"),
    (("name: a,", "name: a, type: pvh, passthrough: enabled,"), r"passthrough not yet supported for x86 PVH"),
    (("name: a,", "name: a, state: asleep,"), r"domains\[1\]\.state: 'asleep' is not one of"),
    (("name: a,", "name: a, type: hvm, device_model: stubdom,"), r"domains\[1\]\.stubdom: required"),
    (("name: a,", "name: a, colour: red,"), r"domains\[0\]: unknown key\(s\) colour"),
    (("vendor: 0x1234", "vendor: 0x12345"), r"devices\[0000:00:10.0\]\.vendor: 74565 out of range"),
])
def test_errors_name_the_field(edit, message):
    text = BASE.replace('"10.0"', '"00:10.0"').replace(*edit)
    with pytest.raises(ScenarioError, match=message):
        sc.loads(text)


def test_stubdom_links_are_checked():
    text = """
name: s
domains:
  - {domid: 3, name: g, type: hvm, device_model: stubdom, stubdom: 4}
  - {domid: 4, name: g-dm, type: pv, target: 5}
"""
    with pytest.raises(ScenarioError, match=r"domains\[4\]\.target: must be 3"):
        sc.loads(text)
    ok = sc.loads(text.replace("target: 5", "target: 3"))
    assert ok.domain(4).is_stubdom and ok.domain(3).stubdom == 4


def test_device_used_twice_and_bad_yaml():
    text = BASE.replace('"10.0"', '"00:10.0"') + '  - {domid: 2, name: b, devices: ["00:10.0"]}\n'
    with pytest.raises(ScenarioError, match=r"domains\[2\]\.devices: 0000:00:10.0 is already assigned to domain 1"):
        sc.loads(text)
    with pytest.raises(ScenarioError, match="not valid YAML"):
        sc.loads("name: [")
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        sc.load("/nonexistent/x.yaml")


def test_xenstored_flavour(tmp_path):
    from xensim.host import SimHost

    text = BASE.replace('"10.0"', '"00:10.0"')
    assert sc.loads(text).xenstored == "oxenstored"
    s = sc.loads(text + "xenstored: c\n")
    assert s.xenstored == "c"
    assert SimHost(s, tmp_path).xenstored_flavour == "c"
    assert SimHost(s, tmp_path, xenstored="oxenstored").xenstored_flavour == "oxenstored"
    with pytest.raises(ScenarioError, match=r"xenstored: expected oxenstored or c, got 'cxenstored'"):
        sc.loads(text + "xenstored: cxenstored\n")


@pytest.mark.parametrize("edit, message", [
    ("parent: \"00:1c.0\"", None),
    ("parent: \"00:1d.0\"", r"00:1d.0 is not a PCI-to-PCI bridge"),
    ("parent: \"00:09.0\"", r"00:09.0 is not a PCI-to-PCI bridge"),
    ("serial: 0x10, pcie: false", r"serial: a serial number is a PCIe extended capability"),
    ("serial: -1", r"serial: -1 out of range"),
    ("pcie: false, reset_method: [flr]", r"reset_method: flr is a PCI Express capability"),
])
def test_bridges_and_serials_are_checked(edit, message):
    text = """
name: b
devices:
  - {bdf: "00:1c.0", vendor: 0x8086, device: 0xa110, class: 0x060400}
  - {bdf: "00:1d.0", vendor: 0x8086, device: 0x100e, class: 0x020000}
  - {bdf: "01:00.0", vendor: 0x8086, device: 0x100e, class: 0x020000, EDIT}
""".replace("EDIT", edit)
    if message is None:
        s = sc.loads(text)
        assert s.device("0000:01:00.0").parent == "0000:00:1c.0"
        # the header type follows the class unless given
        assert s.device("0000:00:1c.0").header_type == 1 and s.device("0000:01:00.0").header_type == 0
        return
    with pytest.raises(ScenarioError, match=message):
        sc.loads(text)


@pytest.mark.parametrize("second, message", [
    # a child sits on another bus than its bridge
    ('{bdf: "00:1d.0", vendor: 0x8086, device: 0x100e, parent: "00:1c.0"}', r"in its segment, on another bus"),
    # a bridge's class fixes its header type
    ('{bdf: "00:1e.0", vendor: 0x8086, device: 0xa110, class: 0x060400, header_type: 0}',
     r"devices\[0000:00:1e.0\]\.header_type: a device of class 0x060400 has header type 1, not 0"),
])
def test_bridge_rules(second, message):
    text = """
name: b
devices:
  - {bdf: "00:1c.0", vendor: 0x8086, device: 0xa110, class: 0x060400}
  - SECOND
""".replace("SECOND", second)
    with pytest.raises(ScenarioError, match=message):
        sc.loads(text)

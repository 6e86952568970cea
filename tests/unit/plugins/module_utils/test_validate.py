# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The validation pass: every input checked before the first write, every
message naming the input, the domain and the device."""

from __future__ import annotations

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import DomainError, RefusedError, SpecError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._host_options import platform_from
from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable
from ansible_collections.xen.pci.plugins.module_utils._runner_info import run_info
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough

HOST = """
name: validation-host
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:00:11.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: pciback}
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true}
  - {domid: 2, name: db, type: pv, state: running, pcifront: true}
  - {domid: 5, name: hvm1, type: hvm, state: running, passthrough: enabled, device_model: dom0,
     qemu: {machine: pc, unplug: ack}}
"""

# Where nothing listens: a request that got past validation would fail here.
NOWHERE = "/nonexistent/xenstored/socket"


def toolstack_writes(host):
    """Writes by clients of the xenstored socket (the core), not by the kernels."""
    return [e for e in host.call(lambda: list(host.store.access_log))
            if e.label.startswith("A") and e.op in ("write", "mkdir", "rm", "setperms")]


@pytest.fixture
def host(sim, params_of):
    """The host, with web holding 0000:00:10.0 at virtual slot 03."""
    started = sim(HOST)
    run_passthrough(params_of(started), {"web": ["00:10.0@3"]})
    return started


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), 1e300, 0.5, 3601, True, "10", None])
def test_a_bad_timeout_is_refused_with_the_range_before_connecting(params_of, host, timeout):
    params = params_of(host, timeout=timeout, xenstore_path=NOWHERE)
    for run in (lambda: run_passthrough(params, {"web": ["00:11.0"]}), lambda: run_info(params),
                lambda: run_assignable(dict(params, devices=["00:11.0"]))):
        with pytest.raises(SpecError, match=r"timeout must be .*seconds") as info:
            run()
        assert info.value.details["input"] == "timeout"


@pytest.mark.parametrize("value", [None, 3, 2.5, "00:11.0", {"bdf": "00:11.0"}])
def test_an_assignments_value_that_is_not_a_list_names_the_guest(params_of, host, value):
    with pytest.raises(SpecError, match=r"assignments\[db\]: the devices of db must be a list") as info:
        run_passthrough(params_of(host, xenstore_path=NOWHERE), {"db": value})
    assert info.value.details["domain"] == "db"


@pytest.mark.parametrize("ref", ["\u00b9", "\u2460", "\u0661", "\uff11", " 1", "1 ", "+1", "0x1"])
def test_a_domain_is_an_ascii_number_or_an_exact_name(params_of, host, ref):
    """'١' and '１' once resolved to domid 1; '¹' and '①' raised ValueError."""
    platform = platform_from(params_of(host))
    with pytest.raises(DomainError, match="does not exist on this host") as info:
        run_passthrough(params_of(host), {ref: ["00:11.0"]}, platform=platform)
    assert info.value.details["domain"] == ref
    assert platform.xs.stats.writes == 0


@pytest.mark.parametrize("ref", [True, False, 1.0, None, (1, 2)])
def test_a_domain_given_as_a_bool_or_float_is_a_type_error(params_of, host, ref):
    """True once meant domid 1 through the runner API."""
    with pytest.raises(SpecError, match="a domain is a name or a domain id, got") as info:
        run_passthrough(params_of(host, xenstore_path=NOWHERE), {ref: ["00:11.0"]})
    assert info.value.details["input"].startswith("assignments") or info.value.details["input"].startswith("domain")


def test_a_device_listed_twice_is_refused_before_any_write(params_of, host):
    with pytest.raises(SpecError, match=r"0000:00:11.0 is listed twice for db \(devices #0 and #1\)"):
        run_passthrough(params_of(host, xenstore_path=NOWHERE), {"db": ["00:11.0", "0000:00:11.0,permissive=1"]})


def test_the_same_device_by_name_and_address_is_refused_before_any_write(params_of, host):
    platform = platform_from(params_of(host))
    platform.xs.write("/libxl/pci/0000-00-11-0/name", "nic0")
    before = toolstack_writes(host)
    with pytest.raises(SpecError, match="0000:00:11.0 is declared twice for db"):
        run_passthrough(params_of(host), {"db": ["00:11.0", "name=nic0"]})
    assert toolstack_writes(host) == before


@pytest.mark.parametrize("guest", ["db", "hvm1"])
def test_two_devices_asking_for_one_vslot_are_refused(params_of, host, guest):
    with pytest.raises(SpecError, match=r"virtual slot 04 is asked for twice for %s" % guest):
        run_passthrough(params_of(host, xenstore_path=NOWHERE), {guest: ["00:11.0@4", "00:12.0@04"]})


def test_a_vslot_the_guest_already_uses_is_refused(params_of, host):
    before = toolstack_writes(host)
    with pytest.raises(RefusedError, match=r"virtual slot 03 asked for 0000:00:11.0 is already used by 0000:00:10.0 in web"):
        run_passthrough(params_of(host), {"web": ["00:11.0@3"]})
    assert toolstack_writes(host) == before


def test_a_vslot_an_emulated_device_uses_in_qemu_is_refused(params_of, host):
    before = toolstack_writes(host)
    # Slot 1 of a pc machine is the PIIX3 (ISA bridge, IDE, ...).
    with pytest.raises(RefusedError, match=r"virtual slot 01.0 asked for 0000:00:11.0 is already used by .* in the QEMU of hvm1"):
        run_passthrough(params_of(host), {"hvm1": ["00:11.0@1"]})
    assert toolstack_writes(host) == before


def test_one_device_declared_for_two_guests_is_refused(params_of, host):
    with pytest.raises(SpecError, match="0000:00:11.0 is declared for both db and hvm1"):
        run_passthrough(params_of(host, xenstore_path=NOWHERE), {"db": ["00:11.0"], "hvm1": ["0000:00:11.0"]})


def test_unknown_domains_are_refused_together_with_every_other_problem(params_of, host):
    before = toolstack_writes(host)
    with pytest.raises(XenPciError) as info:
        run_passthrough(params_of(host), {"nosuch": ["00:11.0"], "db": ["00:1e.0"], "web": ["00:12.0@3"]})
    problems = info.value.details["problems"]
    assert [p["domain"] for p in problems] == ["nosuch", "db (domid 2)", "web (domid 1)"]
    assert "does not exist on this host (known: Domain-0, db, hvm1, web)" in problems[0]["msg"]
    assert "0000:00:1e.0 does not exist" in problems[1]["msg"]
    assert problems[2]["device"] == "0000:00:12.0"
    assert toolstack_writes(host) == before


def test_check_mode_refuses_what_the_real_run_refuses(params_of, host):
    for check_mode in (True, False):
        with pytest.raises(RefusedError, match="already used by 0000:00:10.0"):
            run_passthrough(params_of(host), {"web": ["00:11.0@3"]}, check_mode=check_mode)


def test_an_overlong_device_name_is_a_spec_error_not_a_protocol_error(params_of, host):
    with pytest.raises(SpecError, match="name is longer than 128 characters") as info:
        run_assignable(params_of(host, devices=[{"bdf": "00:11.0", "name": "n" * 5000}], xenstore_path=NOWHERE))
    assert info.value.details["input"] == "devices[0]" and len(info.value.msg) < 400


def test_assignable_collects_every_problem_of_its_device_list(params_of, host):
    with pytest.raises(SpecError) as info:
        run_assignable(params_of(host, devices=["00:1g.0", 7, {"bdf": "00:11.0", "x": 1}, "00:12.0", "0000:00:12.0"],
                                 xenstore_path=NOWHERE))
    assert [p["input"] for p in info.value.details["problems"]] == ["devices[0]", "devices[1]", "devices[2]", "devices[4]"]


def test_a_guest_writing_bytes_that_are_not_utf8_into_its_frontend_crashes_nothing(params_of, host):
    guest = platform_from(params_of(host, xenstore_path=host.paths["xenstored_as"]["1"])).xs
    guest.write("/local/domain/1/device/pci/0/state", b"\xff\xfe4")
    result = run_passthrough(params_of(host), {"web": ["00:10.0@3"]})
    assert not result["changed"]
    info = run_info(params_of(host))
    assert any("/local/domain/1/device/pci/0/state" in w and "not UTF-8" in w for w in info["warnings_detail"])
    assert info["domains"]["web"]["backend"]["frontend_state"] is None


def test_a_host_whose_pci_bookkeeping_lists_over_4096_bytes_is_read(params_of, sim):
    devices = "\n".join('  - {bdf: "0000:%02x:%02x.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}'
                        % (1 + i // 32, i % 32) for i in range(320))
    host = sim("name: wide\ndevices:\n%s\ndomains:\n  - {domid: 1, name: g, type: pv, state: running, pcifront: true}\n" % devices)
    platform = platform_from(params_of(host))
    for i in range(320):
        platform.xs.write("/libxl/pci/0000-%02x-%02x-0/name" % (1 + i // 32, i % 32), "dev%d" % i)
    info = run_info(params_of(host))
    assert len([d for d in info["devices"] if d["name"]]) == 320

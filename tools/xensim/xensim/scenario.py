"""Scenario files: the YAML description of a simulated Xen host.

The format is documented in docs/xensim.md ("Scenario files").  Loading
validates every field and names the offending one in the error, so a typo in
a scenario fails loudly instead of producing a subtly different host.
"""

from __future__ import annotations

import dataclasses
import re
import uuid as uuidlib
from pathlib import Path
from typing import Any

import yaml

from .boot import parse_boot
from .sysfs import HEADER_OF_CLASS, default_reset_methods, vf_bdf

# The shipped scenarios: tools/xensim/scenarios beside the package in the
# source tree; inside the package (xensim/scenarios) once installed from the
# wheel (tools/xensim/pyproject.toml maps the directory there).
_PACKAGE_DIR = Path(__file__).resolve().parent
SCENARIO_DIR = next((d for d in (_PACKAGE_DIR / "scenarios", _PACKAGE_DIR.parent / "scenarios") if d.is_dir()),
                    _PACKAGE_DIR.parent / "scenarios")

# Namespace for the deterministic uuids of domains that do not give one.
_UUID_NS = uuidlib.UUID("6f1e0a52-3c1d-4bde-9b0e-78656e73696d")

_BDF_RE = re.compile(
    r"^(?:(?P<seg>[0-9a-fA-F]{1,4}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<slot>[0-9a-fA-F]{1,2})\.(?P<func>[0-7])$")

DOMAIN_TYPES = ("pv", "hvm", "pvh")
DOMAIN_STATES = ("running", "paused", "creating")
UNPLUG_MODES = ("ack", "never", "delay")


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the field."""


def normalise_bdf(text: str, field: str = "bdf") -> str:
    """'00:10.0' or '0000:00:10.0' -> '0000:00:10.0' (lower-case hex)."""
    if not isinstance(text, str):
        raise ScenarioError(f"{field}: expected a BDF string like 0000:00:10.0, got {text!r}")
    m = _BDF_RE.match(text.strip())
    if not m:
        raise ScenarioError(f"{field}: {text!r} is not a BDF ([DDDD:]BB:SS.F)")
    seg = int(m.group("seg") or "0", 16)
    bus = int(m.group("bus"), 16)
    slot = int(m.group("slot"), 16)
    func = int(m.group("func"))
    if slot > 0x1F:
        raise ScenarioError(f"{field}: slot {slot:#x} of {text!r} exceeds 0x1f")
    return f"{seg:04x}:{bus:02x}:{slot:02x}.{func:x}"


def bdf_parts(bdf: str) -> tuple[int, int, int, int]:
    seg, bus, rest = bdf.split(":")
    slot, func = rest.split(".")
    return int(seg, 16), int(bus, 16), int(slot, 16), int(func, 16)


def bdf_to_xs(bdf: str) -> str:
    """'0000:00:10.0' -> '0000-00-10-0' (the /libxl/pci path component)."""
    return bdf.replace(":", "-").replace(".", "-")


@dataclasses.dataclass
class DeviceSpec:
    bdf: str
    vendor: int
    device: int
    klass: int = 0x00FF00
    subsystem_vendor: int = 0x1AF4
    subsystem_device: int = 0x1100
    revision: int = 0
    driver: str | None = None
    hidden: bool = False
    resources: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    irq: int = 0
    reset: bool = True
    # The kernel's reset methods (reset_method's words); when not given, flr
    # for a PCIe function with ``reset`` (pm for conventional PCI), none
    # without. The config space is built to agree.
    reset_method: list[str] | None = None
    # Config space byte 0x0e, low 7 bits: 0 endpoint, 1 PCI bridge, 2 CardBus;
    # by default what the class says (0x0604xx: 1, 0x0607xx: 2, else 0).
    header_type: int = 0
    iommu_group: int | None = None
    # libxl bookkeeping for devices made assignable with pci-assignable-add:
    # the driver they were taken from (-> /libxl/pci/<bdf>/driver_path) and
    # an optional name (-> /libxl/pci/<bdf>/name).
    original_driver: str | None = None
    name: str | None = None
    # Identity beyond the ids: the firmware's label (sysfs ``label``, only
    # when set), the PCIe Device Serial Number (an extended capability in
    # config space), whether the function is PCIe (4096 bytes of config
    # space) or conventional PCI (256), and the bridge it sits behind.
    label: str | None = None
    serial: int | None = None
    pcie: bool = True
    parent: str | None = None
    # An SR-IOV physical function: its capability and its VFs' start state.
    sriov: "SriovSpec | None" = None


@dataclasses.dataclass
class SriovSpec:
    """A PF's SR-IOV capability (TotalVFs, First VF Offset, VF Stride, VF
    Device ID), the dom0 driver of its VFs and the VFs enabled at start."""
    totalvfs: int
    vf_device: int
    offset: int = 1
    stride: int = 1
    vf_driver: str | None = None
    numvfs: int = 0
    # false: the PF driver has no sriov_configure (sriov_numvfs says ENOENT)
    configurable: bool = True
    drivers_autoprobe: bool = True

    def vf_bdfs(self, pf: str, count: int | None = None) -> list[str]:
        return [vf_bdf(pf, self.offset, self.stride, i) for i in range(self.totalvfs if count is None else count)]


@dataclasses.dataclass
class QemuSpec:
    machine: str = "pc"
    unplug: str = "ack"
    unplug_delay: float = 2.0


@dataclasses.dataclass
class DomainSpec:
    domid: int
    name: str
    type: str = "pv"
    state: str = "running"
    passthrough: str = "enabled"
    pcifront: bool = False
    devices: list[str] = dataclasses.field(default_factory=list)
    device_model: str | None = None     # hvm only: dom0 | stubdom
    stubdom: int | None = None          # hvm with device_model stubdom
    target: int | None = None           # set on a stub domain: its guest
    qemu: QemuSpec | None = None
    uuid: str = ""
    memory: int = 128                   # MiB
    vcpus: int = 1

    @property
    def is_stubdom(self) -> bool:
        return self.target is not None


@dataclasses.dataclass
class Scenario:
    name: str
    description: str = ""
    devices: list[DeviceSpec] = dataclasses.field(default_factory=list)
    domains: list[DomainSpec] = dataclasses.field(default_factory=list)
    faults: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Scale of the simulated kernel delays (1.0 = about real Xen's timing).
    timing_scale: float = 0.1
    # Which xenstored the store answers like (xenstore/store.py FLAVOURS).
    xenstored: str = "oxenstored"
    # Xen booted with a working IOMMU (physinfo's directio capability).
    iommu: bool = True
    # xen-pciback as a loaded module or built into the dom0 kernel.
    pciback: str = "module"
    pciback_do_flr: bool = False
    source: str | None = None
    # The dom0 boot setup (boot.py): loader, pciback kind, files.
    boot: dict[str, Any] = dataclasses.field(default_factory=dict)

    def device(self, bdf: str) -> DeviceSpec | None:
        bdf = normalise_bdf(bdf)
        for dev in self.devices:
            if dev.bdf == bdf:
                return dev
        return None

    def domain(self, domid: int) -> DomainSpec | None:
        for dom in self.domains:
            if dom.domid == domid:
                return dom
        return None

    def owner_of(self, bdf: str) -> DomainSpec | None:
        for dom in self.domains:
            if bdf in dom.devices:
                return dom
        return None


# --------------------------------------------------------------- parsing

def _int(value: Any, field: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool):
        raise ScenarioError(f"{field}: expected an integer, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise ScenarioError(f"{field}: expected an integer, got {value!r}") from None
    if not isinstance(value, int):
        raise ScenarioError(f"{field}: expected an integer, got {value!r}")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ScenarioError(f"{field}: {value} out of range [{lo}, {hi}]")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"{field}: expected true or false, got {value!r}")
    return value


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ScenarioError(f"{field}: expected a non-empty string, got {value!r}")
    return value


def _choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ScenarioError(f"{field}: {value!r} is not one of {', '.join(choices)}")
    return value


def _mapping(value: Any, field: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{field}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ScenarioError(f"{field}: unknown key(s) {', '.join(map(str, unknown))}")
    return value


_DEVICE_KEYS = {"bdf", "vendor", "device", "class", "subsystem_vendor", "subsystem_device",
                "revision", "driver", "hidden", "resources", "irq", "reset", "reset_method",
                "header_type", "iommu_group", "original_driver", "name", "label", "serial", "pcie",
                "parent", "sriov"}
_SRIOV_KEYS = {"totalvfs", "vf_device", "offset", "stride", "vf_driver", "numvfs", "configurable",
               "drivers_autoprobe"}
_DOMAIN_KEYS = {"domid", "name", "type", "state", "passthrough", "pcifront", "devices",
                "device_model", "stubdom", "target", "qemu", "uuid", "memory", "vcpus"}
_TOP_KEYS = {"name", "description", "devices", "domains", "faults", "timing", "xenstored", "iommu", "pciback",
             "pciback_do_flr", "boot"}
# The kernel's reset methods, in the order it tries them (pci_reset_fn_methods).
RESET_METHODS = ("device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus")
PCIBACK_MODES = ("module", "builtin")


def _reset_methods(raw: Any, reset: bool, pcie: bool, where: str) -> list[str]:
    if "reset_method" not in raw:
        return default_reset_methods(reset, pcie)
    value = raw["reset_method"]
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ScenarioError(f"{where}.reset_method: expected a list of method names")
    unknown = sorted(set(value) - set(RESET_METHODS))
    if unknown:
        raise ScenarioError(f"{where}.reset_method: unknown method(s) {', '.join(unknown)} "
                            f"(known: {', '.join(RESET_METHODS)})")
    if "reset" in raw and bool(value) != reset:
        raise ScenarioError(f"{where}.reset: {reset} disagrees with reset_method {value}")
    return [m for m in RESET_METHODS if m in value]


def _parse_sriov(raw: Any, bdf: str, pcie: bool, header: int, driver: str | None, where: str) -> SriovSpec:
    raw = _mapping(raw, where, _SRIOV_KEYS)
    for key in ("totalvfs", "vf_device"):
        if key not in raw:
            raise ScenarioError(f"{where}.{key}: missing")
    if not pcie:
        raise ScenarioError(f"{where}: SR-IOV is a PCIe extended capability; conventional PCI has none")
    if header != 0:
        raise ScenarioError(f"{where}: a physical function has a type 0 header, not {header}")
    vf_driver = raw.get("vf_driver")
    spec = SriovSpec(
        totalvfs=_int(raw["totalvfs"], f"{where}.totalvfs", 1, 256),
        vf_device=_int(raw["vf_device"], f"{where}.vf_device", 0, 0xFFFF),
        # the capability's 16-bit First VF Offset and VF Stride
        offset=_int(raw.get("offset", 1), f"{where}.offset", 1, 0xFFFF),
        stride=_int(raw.get("stride", 1), f"{where}.stride", 1, 0xFFFF),
        vf_driver=None if vf_driver is None else _str(vf_driver, f"{where}.vf_driver"),
        numvfs=_int(raw.get("numvfs", 0), f"{where}.numvfs", 0, 256),
        configurable=_bool(raw.get("configurable", True), f"{where}.configurable"),
        drivers_autoprobe=_bool(raw.get("drivers_autoprobe", True), f"{where}.drivers_autoprobe"),
    )
    if spec.vf_driver == "pciback":
        raise ScenarioError(f"{where}.vf_driver: pciback seizes VFs through its slots, not as their driver")
    if spec.numvfs and driver in (None, "pciback"):
        raise ScenarioError(f"{where}.numvfs: VFs are enabled by the PF's own driver, not {driver or 'none'}")
    if spec.numvfs > spec.totalvfs:
        raise ScenarioError(f"{where}.numvfs: {spec.numvfs} is above totalvfs {spec.totalvfs}")
    _seg, bus, slot, func = bdf_parts(bdf)
    last = (bus << 8 | slot << 3 | func) + spec.offset + (spec.totalvfs - 1) * spec.stride
    if last > 0xFFFF:
        raise ScenarioError(f"{where}: VF {spec.totalvfs - 1}'s routing id {last:#x} is beyond bus 0xff")
    return spec


def _parse_device(raw: Any, where: str) -> DeviceSpec:
    raw = _mapping(raw, where, _DEVICE_KEYS)
    if "bdf" not in raw:
        raise ScenarioError(f"{where}.bdf: missing")
    bdf = normalise_bdf(raw["bdf"], f"{where}.bdf")
    where = f"devices[{bdf}]"
    for key in ("vendor", "device"):
        if key not in raw:
            raise ScenarioError(f"{where}.{key}: missing")
    driver = raw.get("driver")
    if driver is not None:
        driver = _str(driver, f"{where}.driver")
    hidden = _bool(raw.get("hidden", False), f"{where}.hidden")
    if hidden and driver not in (None, "pciback"):
        raise ScenarioError(f"{where}.hidden: a hidden device is bound to pciback, not {driver!r}")
    if hidden:
        driver = "pciback"
    resources = []
    for i, line in enumerate(raw.get("resources") or []):
        f = f"{where}.resources[{i}]"
        if not isinstance(line, (list, tuple)) or len(line) != 3:
            raise ScenarioError(f"{f}: expected [start, end, flags]")
        start, end, flags = (_int(v, f, 0) for v in line)
        if end < start:
            raise ScenarioError(f"{f}: end {end:#x} is below start {start:#x}")
        resources.append((start, end, flags))
    if len(resources) > 7:
        raise ScenarioError(f"{where}.resources: at most 7 lines (BARs 0-5 and the ROM)")
    original = raw.get("original_driver")
    if original is not None:
        original = _str(original, f"{where}.original_driver")
        if driver != "pciback" or hidden:
            raise ScenarioError(f"{where}.original_driver: only for a device made assignable (driver: pciback, not hidden)")
    iommu = raw.get("iommu_group")
    serial = raw.get("serial")
    pcie = _bool(raw.get("pcie", True), f"{where}.pcie")
    if serial is not None:
        serial = _int(serial, f"{where}.serial", 0, (1 << 64) - 1)
        if not pcie:
            raise ScenarioError(f"{where}.serial: a serial number is a PCIe extended capability; conventional PCI has none")
    parent = raw.get("parent")
    if parent is not None:
        parent = normalise_bdf(parent, f"{where}.parent")
    reset = _bool(raw.get("reset", True), f"{where}.reset")
    methods = _reset_methods(raw, reset, pcie, where)
    if "flr" in methods and not pcie:
        raise ScenarioError(f"{where}.reset_method: flr is a PCI Express capability; conventional PCI has af_flr")
    klass = _int(raw.get("class", 0x00FF00), f"{where}.class", 0, 0xFFFFFF)
    header = HEADER_OF_CLASS.get(klass >> 8, 0)
    if "header_type" in raw:
        header = _int(raw["header_type"], f"{where}.header_type", 0, 2)
        if klass >> 8 in HEADER_OF_CLASS and header != HEADER_OF_CLASS[klass >> 8]:
            raise ScenarioError(f"{where}.header_type: a device of class {klass:#08x} has header type "
                                f"{HEADER_OF_CLASS[klass >> 8]}, not {header}")
    sriov = None
    if raw.get("sriov") is not None:
        sriov = _parse_sriov(raw["sriov"], bdf, pcie, header, driver, f"{where}.sriov")
    return DeviceSpec(
        sriov=sriov,
        bdf=bdf,
        vendor=_int(raw["vendor"], f"{where}.vendor", 0, 0xFFFF),
        device=_int(raw["device"], f"{where}.device", 0, 0xFFFF),
        klass=klass,
        subsystem_vendor=_int(raw.get("subsystem_vendor", 0x1AF4), f"{where}.subsystem_vendor", 0, 0xFFFF),
        subsystem_device=_int(raw.get("subsystem_device", 0x1100), f"{where}.subsystem_device", 0, 0xFFFF),
        revision=_int(raw.get("revision", 0), f"{where}.revision", 0, 0xFF),
        driver=driver,
        hidden=hidden,
        resources=resources,
        irq=_int(raw.get("irq", 0), f"{where}.irq", 0, 0xFFFF),
        reset=bool(methods),
        reset_method=methods,
        header_type=header,
        iommu_group=None if iommu is None else _int(iommu, f"{where}.iommu_group", 0),
        original_driver=original,
        name=None if raw.get("name") is None else _str(raw["name"], f"{where}.name"),
        label=None if raw.get("label") is None else _str(raw["label"], f"{where}.label"),
        serial=serial,
        pcie=pcie,
        parent=parent,
    )


def _parse_domain(raw: Any, where: str) -> DomainSpec:
    raw = _mapping(raw, where, _DOMAIN_KEYS)
    for key in ("domid", "name"):
        if key not in raw:
            raise ScenarioError(f"{where}.{key}: missing")
    domid = _int(raw["domid"], f"{where}.domid", 1, 0x7FEF)
    where = f"domains[{domid}]"
    dtype = _choice(raw.get("type", "pv"), f"{where}.type", DOMAIN_TYPES)
    pcifront_default = dtype == "pv"
    pcifront = _bool(raw.get("pcifront", pcifront_default), f"{where}.pcifront")
    if pcifront and dtype != "pv":
        raise ScenarioError(f"{where}.pcifront: xen-pcifront only runs in PV guests, not {dtype}")
    devices = raw.get("devices") or []
    if not isinstance(devices, list):
        raise ScenarioError(f"{where}.devices: expected a list of BDF strings")
    devices = [normalise_bdf(d, f"{where}.devices[{i}]") for i, d in enumerate(devices)]
    if len(set(devices)) != len(devices):
        raise ScenarioError(f"{where}.devices: a device is listed twice")
    dm = raw.get("device_model")
    stubdom = raw.get("stubdom")
    qemu = None
    if dtype == "hvm":
        dm = _choice(dm or "dom0", f"{where}.device_model", ("dom0", "stubdom"))
        if dm == "stubdom":
            if stubdom is None:
                raise ScenarioError(f"{where}.stubdom: required with device_model: stubdom")
            stubdom = _int(stubdom, f"{where}.stubdom", 1, 0x7FEF)
        elif stubdom is not None:
            raise ScenarioError(f"{where}.stubdom: only with device_model: stubdom")
        qraw = _mapping(raw.get("qemu") or {}, f"{where}.qemu", {"machine", "unplug", "unplug_delay"})
        qemu = QemuSpec(
            machine=_choice(qraw.get("machine", "pc"), f"{where}.qemu.machine", ("pc", "q35")),
            unplug=_choice(qraw.get("unplug", "ack"), f"{where}.qemu.unplug", UNPLUG_MODES),
            unplug_delay=float(qraw.get("unplug_delay", 2.0)),
        )
    else:
        for key in ("device_model", "stubdom", "qemu"):
            if raw.get(key) is not None:
                raise ScenarioError(f"{where}.{key}: only for hvm domains")
    target = raw.get("target")
    if target is not None:
        target = _int(target, f"{where}.target", 1, 0x7FEF)
        if dtype != "pv":
            raise ScenarioError(f"{where}.target: a stub domain is pv")
    passthrough = _choice(raw.get("passthrough", "disabled" if dtype == "pvh" else "enabled"),
                          f"{where}.passthrough", ("enabled", "disabled"))
    if dtype == "pvh" and passthrough == "enabled":
        # libxl__arch_passthrough_mode_setdefault refuses it on x86.
        raise ScenarioError(f"{where}.passthrough: passthrough not yet supported for x86 PVH guests")
    name = _str(raw["name"], f"{where}.name")
    uid = raw.get("uuid")
    if uid is None:
        uid = str(uuidlib.uuid5(_UUID_NS, f"{domid}:{name}"))
    else:
        try:
            uid = str(uuidlib.UUID(str(uid)))
        except ValueError:
            raise ScenarioError(f"{where}.uuid: {uid!r} is not a uuid") from None
    return DomainSpec(
        domid=domid,
        name=name,
        type=dtype,
        state=_choice(raw.get("state", "running"), f"{where}.state", DOMAIN_STATES),
        passthrough=passthrough,
        pcifront=pcifront,
        devices=devices,
        device_model=dm,
        stubdom=stubdom,
        target=target,
        qemu=qemu,
        uuid=uid,
        memory=_int(raw.get("memory", 128), f"{where}.memory", 1),
        vcpus=_int(raw.get("vcpus", 1), f"{where}.vcpus", 1, 128),
    )


def parse(data: Any, source: str | None = None) -> Scenario:
    """Validate a decoded YAML document and build a Scenario."""
    data = _mapping(data, "scenario", _TOP_KEYS)
    if "name" not in data:
        raise ScenarioError("name: missing")
    devices_raw = data.get("devices") or []
    domains_raw = data.get("domains") or []
    if not isinstance(devices_raw, list):
        raise ScenarioError("devices: expected a list")
    if not isinstance(domains_raw, list):
        raise ScenarioError("domains: expected a list")
    devices = [_parse_device(d, f"devices[{i}]") for i, d in enumerate(devices_raw)]
    seen: set[str] = set()
    for dev in devices:
        if dev.bdf in seen:
            raise ScenarioError(f"devices[{dev.bdf}]: duplicate BDF")
        seen.add(dev.bdf)
    by_bdf = {d.bdf: d for d in devices}
    # Every VF a PF can enable (totalvfs, not numvfs: sriov_numvfs may ask
    # for them all) needs a free address.
    vf_of: dict[str, str] = {}
    for dev in devices:
        if dev.sriov is None:
            continue
        for i, vf in enumerate(dev.sriov.vf_bdfs(dev.bdf)):
            if vf in by_bdf:
                raise ScenarioError(f"devices[{dev.bdf}].sriov: VF {i} at {vf} collides with device {vf}")
            if vf in vf_of:
                raise ScenarioError(f"devices[{dev.bdf}].sriov: VF {i} at {vf} collides with a VF of {vf_of[vf]}")
            vf_of[vf] = dev.bdf
    for dev in devices:
        if dev.parent is None:
            continue
        bridge = by_bdf.get(dev.parent)
        if bridge is None or bridge.klass >> 8 != 0x0604:
            raise ScenarioError(f"devices[{dev.bdf}].parent: {dev.parent} is not a PCI-to-PCI bridge (class 0x0604xx) in devices")
        if bridge.bdf[:4] != dev.bdf[:4] or bridge.bdf[5:7] == dev.bdf[5:7]:
            raise ScenarioError(f"devices[{dev.bdf}].parent: a device behind {dev.parent} is in its segment, on another bus")
        hop, chain = bridge, {dev.bdf}
        while hop is not None:
            if hop.bdf in chain:
                raise ScenarioError(f"devices[{dev.bdf}].parent: the bridges form a loop")
            chain.add(hop.bdf)
            hop = by_bdf.get(hop.parent) if hop.parent else None
    domains = [_parse_domain(d, f"domains[{i}]") for i, d in enumerate(domains_raw)]
    by_id: dict[int, DomainSpec] = {}
    names: set[str] = set()
    for dom in domains:
        if dom.domid in by_id:
            raise ScenarioError(f"domains[{dom.domid}].domid: duplicate domid")
        if dom.name in names:
            raise ScenarioError(f"domains[{dom.domid}].name: duplicate name {dom.name!r}")
        by_id[dom.domid] = dom
        names.add(dom.name)
    owners: dict[str, int] = {}
    for dom in domains:
        where = f"domains[{dom.domid}]"
        if dom.stubdom is not None:
            stub = by_id.get(dom.stubdom)
            if stub is None:
                raise ScenarioError(f"{where}.stubdom: no domain with domid {dom.stubdom}")
            if stub.target != dom.domid:
                raise ScenarioError(f"domains[{stub.domid}].target: must be {dom.domid} (it is the stub domain of {dom.name})")
        if dom.target is not None:
            guest = by_id.get(dom.target)
            if guest is None or guest.type != "hvm" or guest.stubdom != dom.domid:
                raise ScenarioError(f"{where}.target: domain {dom.target} is not an hvm guest with stubdom: {dom.domid}")
            if dom.devices:
                raise ScenarioError(f"{where}.devices: list the devices on the guest {dom.target}, not on its stub domain")
        if dom.devices and dom.passthrough != "enabled":
            raise ScenarioError(f"{where}.devices: passthrough is disabled for this domain")
        for bdf in dom.devices:
            dev = next((d for d in devices if d.bdf == bdf), None)
            if dev is None:
                raise ScenarioError(f"{where}.devices: {bdf} is not in devices")
            if dev.driver != "pciback":
                raise ScenarioError(f"{where}.devices: {bdf} is not bound to pciback (driver: {dev.driver})")
            if bdf in owners:
                raise ScenarioError(f"{where}.devices: {bdf} is already assigned to domain {owners[bdf]}")
            owners[bdf] = dom.domid
    faults = data.get("faults") or []
    if not isinstance(faults, list):
        raise ScenarioError("faults: expected a list")
    for i, fault in enumerate(faults):
        if not isinstance(fault, dict) or "point" not in fault:
            raise ScenarioError(f"faults[{i}]: expected a mapping with a 'point'")
    timing = _mapping(data.get("timing") or {}, "timing", {"scale"})
    scale = timing.get("scale", 0.1)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale < 0:
        raise ScenarioError(f"timing.scale: expected a number >= 0, got {scale!r}")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise ScenarioError("description: expected a string")
    xenstored = data.get("xenstored", "oxenstored")
    if xenstored not in ("oxenstored", "c"):
        raise ScenarioError(f"xenstored: expected oxenstored or c, got {xenstored!r}")
    try:
        boot = parse_boot(data.get("boot"))
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    # One dom0 kernel: its sysfs (pciback) and its boot files (boot.pciback)
    # have xen-pciback the same way; either key sets both.
    pciback = _choice(data.get("pciback", boot["pciback"]), "pciback", PCIBACK_MODES)
    if "pciback" in data and "pciback" in (data.get("boot") or {}) and pciback != boot["pciback"]:
        raise ScenarioError(f"boot.pciback: {boot['pciback']} disagrees with pciback {pciback}")
    boot["pciback"] = pciback
    return Scenario(
        boot=boot,
        name=_str(data["name"], "name"),
        description=desc,
        devices=devices,
        domains=sorted(domains, key=lambda d: d.domid),
        faults=[dict(f) for f in faults],
        timing_scale=float(scale),
        xenstored=xenstored,
        iommu=_bool(data.get("iommu", True), "iommu"),
        pciback=pciback,
        pciback_do_flr=_bool(data.get("pciback_do_flr", False), "pciback_do_flr"),
        source=source,
    )


def loads(text: str, source: str | None = None) -> Scenario:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"not valid YAML: {exc}") from None
    return parse(data, source)


def load(path: str | Path) -> Scenario:
    """Load a scenario file; a bare name means a shipped scenario."""
    p = Path(path)
    if not p.exists() and not p.suffix and (SCENARIO_DIR / f"{p}.yaml").exists():
        p = SCENARIO_DIR / f"{p}.yaml"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {str(path)!r}: {exc.strerror}") from None
    return loads(text, str(p))


def shipped() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.yaml"))

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_xenctrl: SimXenCtrl against xensim's hypervisor endpoint, LibXenCtrl's
ctypes marshalling against a C library exporting libxenctrl's symbols."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import types

import pytest

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf
from ansible_collections.xen.pci.plugins.module_utils._errors import HypervisorError, SpecError
from ansible_collections.xen.pci.plugins.module_utils._xenctrl import (
    DOMID_IO, LibXenCtrl, SimXenCtrl, format_sbdf, open_xenctrl)

_XENSIM = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "tools", "xensim"))
if os.path.isdir(_XENSIM) and _XENSIM not in sys.path:
    sys.path.insert(0, _XENSIM)

SCENARIO = {
    "devices": [{"bdf": "00:10.0"}, {"bdf": "00:11.0", "hidden": True}],
    "domains": [
        {"domid": 1, "type": "pv", "state": "running", "passthrough": "enabled"},
        {"domid": 2, "type": "pv", "state": "running", "passthrough": "disabled"},
        {"domid": 3, "type": "hvm", "state": "paused", "passthrough": "enabled"},
    ],
}
SBDF_10 = 0x10 << 3


@pytest.fixture
def hv(tmp_path):
    hypervisor = pytest.importorskip("xensim.hypervisor", reason="xensim (tools/xensim) is not importable")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    host = types.SimpleNamespace(paths={"hypervisor": str(tmp_path / "privcmd")}, scenario=SCENARIO,
                                 grants=[], loop=loop)
    hyp = hypervisor.Hypervisor(host)
    asyncio.run_coroutine_threadsafe(hyp.start(), loop).result(10)
    yield hyp
    asyncio.run_coroutine_threadsafe(hyp.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_sim_round_trip(hv):
    with open_xenctrl("xensim:" + hv.path, timeout=5) as xc:
        assert isinstance(xc, SimXenCtrl)
        xc.assign_device(DOMID_IO, SBDF_10)
        xc.test_assign_device(1, SBDF_10)
        xc.assign_device(1, SBDF_10, 0)
        assert hv.owner(SBDF_10) == 1
        assert xc.physdev_map_pirq(1, 11, 11) == 11
        xc.irq_permission(1, 11, True)
        xc.iomem_permission(1, 0xFE000, 0x100, True)
        xc.ioport_permission(1, 0xC000, 0x40, True)
        assert hv.permissions(1)["ioport"] == [(0xC000, 0xC03F)]
        info = xc.domain_getinfo(3)
        assert info["hvm"] and info["paused"] and info["domid"] == 3
        xc.deassign_device(1, SBDF_10)
        assert hv.owner(SBDF_10) == DOMID_IO
    assert [g["op"] for g in hv.host.grants] == [
        "assign_device", "test_assign_device", "assign_device", "physdev_map_pirq", "irq_permission",
        "iomem_permission", "ioport_permission", "domain_getinfo", "deassign_device"]


def test_sim_errors_carry_errno_names(hv):
    xc = SimXenCtrl(hv.path, timeout=5)
    with pytest.raises(HypervisorError) as ei:
        xc.assign_device(2, SBDF_10, 0)
    assert ei.value.errno == "EOPNOTSUPP"
    assert "Operation not supported" in ei.value.msg
    assert "0000:00:10.0" in ei.value.msg            # sbdf shown as a BDF
    with pytest.raises(HypervisorError) as ei:
        xc.domain_getinfo(42)
    assert ei.value.errno == "ESRCH"
    xc.assign_device(1, SBDF_10)
    with pytest.raises(HypervisorError) as ei:
        xc.assign_device(3, SBDF_10)
    assert ei.value.errno == "EBUSY"
    # the connection is still usable after errors
    xc.deassign_device(1, SBDF_10)
    xc.close()


def test_format_sbdf_is_bdfs():
    for text in ("0000:00:10.0", "0001:0a:1f.7", "ffff:ff:1f.7"):
        assert format_sbdf(Bdf.parse(text).sbdf) == text
    for bad in (-1, 1 << 32, "16", True):
        with pytest.raises(SpecError):
            format_sbdf(bad)


def test_an_error_about_a_bad_sbdf_still_reports(hv):
    xc = SimXenCtrl(hv.path, timeout=5)
    try:
        with pytest.raises(HypervisorError) as ei:
            xc.assign_device(1, -1, 0)
        assert "sbdf=-1" in ei.value.msg
    finally:
        xc.close()


def test_sim_unreachable_and_bad_specs(tmp_path):
    xc = SimXenCtrl(str(tmp_path / "nothing"), timeout=1)
    with pytest.raises(HypervisorError) as ei:
        xc.domain_getinfo(0)
    assert ei.value.errno == "ENOENT"
    with pytest.raises(HypervisorError):
        open_xenctrl("xensim:")
    with pytest.raises(HypervisorError):
        open_xenctrl("qemu:/x")


def test_sim_silent_server_times_out(tmp_path):
    import socket
    path = str(tmp_path / "mute")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    try:
        xc = SimXenCtrl(path, timeout=0.3)
        with pytest.raises(HypervisorError) as ei:
            xc.domain_getinfo(0)
        assert ei.value.errno == "ETIMEDOUT"
    finally:
        srv.close()


SHIM_C = r"""
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int handle = 42;

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void note(const char *fmt, ...)
{
    const char *path = getenv("XCSHIM_LOG");
    FILE *f;
    va_list ap;
    if (!path || !(f = fopen(path, "a")))
        return;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fclose(f);
}

static int outcome(const char *fn)
{
    const char *want = getenv("XCSHIM_FAIL");
    if (want && !strcmp(want, fn)) {
        errno = atoi(getenv("XCSHIM_ERRNO"));
        return -1;
    }
    return 0;
}

void *xc_interface_open(void *l, void *d, unsigned flags)
{
    note("open %p %p %u", l, d, flags);
    if (outcome("xc_interface_open"))
        return NULL;
    return &handle;
}

int xc_interface_close(void *xch) { note("close %d", *(int *)xch); return 0; }

int xc_domain_iomem_permission(void *xch, uint32_t domid, unsigned long mfn, unsigned long nr, uint8_t allow)
{ note("iomem %d %u %#lx %#lx %u", *(int *)xch, domid, mfn, nr, allow); return outcome(__func__); }

int xc_domain_ioport_permission(void *xch, uint32_t domid, uint32_t port, uint32_t nr, uint32_t allow)
{ note("ioport %u %#x %#x %u", domid, port, nr, allow); return outcome(__func__); }

int xc_domain_irq_permission(void *xch, uint32_t domid, uint32_t pirq, bool allow)
{ note("irq %u %u %d", domid, pirq, (int)allow); return outcome(__func__); }

int xc_physdev_map_pirq(void *xch, uint32_t domid, int index, int *pirq)
{
    note("map %u %d %d", domid, index, *pirq);
    if (outcome(__func__))
        return -1;
    *pirq = (*pirq < 0 ? index : *pirq) + 1000;
    return 0;
}

int xc_physdev_unmap_pirq(void *xch, uint32_t domid, int pirq)
{ note("unmap %u %d", domid, pirq); return outcome(__func__); }

int xc_assign_device(void *xch, uint32_t domid, uint32_t sbdf, uint32_t flags)
{ note("assign %u %#x %u", domid, sbdf, flags); return outcome(__func__); }

int xc_deassign_device(void *xch, uint32_t domid, uint32_t sbdf)
{ note("deassign %u %#x", domid, sbdf); return outcome(__func__); }

int xc_test_assign_device(void *xch, uint32_t domid, uint32_t sbdf)
{ note("test %u %#x", domid, sbdf); return outcome(__func__); }

int xc_domain_getinfolist(void *xch, uint32_t first, unsigned int max, void *info)
{
    unsigned char *p = info;
    uint16_t dom = first;
    uint32_t flags = (1u << 1) | (1u << 3);   /* hvm_guest | paused */
    note("getinfolist %u %u", first, max);
    if (outcome(__func__))
        return -1;
    if (first > 5)
        return 0;
    if (first == 4)
        dom = 5;   /* the next existing domain, as Xen answers for a gap */
    memset(p, 0, 112);
    memcpy(p, &dom, 2);
    memcpy(p + 4, &flags, 4);
    return 1;
}
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        pytest.skip("no C compiler: cannot build the libxenctrl stand-in for LibXenCtrl's marshalling test")
    d = tmp_path_factory.mktemp("xcshim")
    src = d / "shim.c"
    src.write_text(SHIM_C)
    lib = d / "libxcshim.so"
    res = subprocess.run([gcc, "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(lib), str(src)],
                         capture_output=True, text=True, timeout=60, check=False)
    if res.returncode:
        pytest.fail("shim build failed: %s" % res.stderr)
    return str(lib)


@pytest.fixture
def shim_env(tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("XCSHIM_LOG", str(log))
    monkeypatch.delenv("XCSHIM_FAIL", raising=False)
    return log


def test_libxenctrl_marshalling(shim, shim_env):
    xc = open_xenctrl("libxenctrl:" + shim)
    assert isinstance(xc, LibXenCtrl)
    xc.iomem_permission(1, 0xFE000, 0x100, True)
    xc.ioport_permission(1, 0xC000, 0x40, False)
    xc.irq_permission(1, 11, True)
    assert xc.physdev_map_pirq(1, 11, 11) == 1011
    assert xc.physdev_map_pirq(1, 10) == 1010          # pirq -1: Xen picks from the index
    xc.physdev_unmap_pirq(1, 11)
    xc.assign_device(DOMID_IO, 0x80, 1)
    xc.deassign_device(3, 0x10088)
    xc.test_assign_device(0x7FF4, 0x80)
    info = xc.domain_getinfo(3)
    assert info == {"domid": 3, "flags": 0xA, "hvm": True, "paused": True, "dying": False, "shutdown": False}
    xc.close()
    assert shim_env.read_text().splitlines() == [
        "open (nil) (nil) 0",
        "iomem 42 1 0xfe000 0x100 1",
        "ioport 1 0xc000 0x40 0",
        "irq 1 11 1",
        "map 1 11 11",
        "map 1 10 -1",
        "unmap 1 11",
        "assign 32753 0x80 1",
        "deassign 3 0x10088",
        "test 32756 0x80",
        "getinfolist 3 1",
        "close 42",
    ]


def test_libxenctrl_errno_and_missing_domains(shim, shim_env, monkeypatch):
    xc = LibXenCtrl(shim)
    monkeypatch.setenv("XCSHIM_FAIL", "xc_assign_device")
    monkeypatch.setenv("XCSHIM_ERRNO", "95")
    with pytest.raises(HypervisorError) as ei:
        xc.assign_device(1, 0x80)
    assert ei.value.errno == "EOPNOTSUPP"
    assert "xc_assign_device(domid=1, sbdf=0000:00:10.0, flags=0)" in ei.value.msg
    monkeypatch.delenv("XCSHIM_FAIL")
    # getinfolist answers with the next domain, or none: both mean ESRCH
    for domid in (4, 9):
        with pytest.raises(HypervisorError) as ei:
            xc.domain_getinfo(domid)
        assert ei.value.errno == "ESRCH"
    xc.close()
    with pytest.raises(HypervisorError) as ei:
        xc.assign_device(1, 0x80)
    assert ei.value.errno == "EBADF"


def test_libxenctrl_open_failure(shim, shim_env, monkeypatch):
    monkeypatch.setenv("XCSHIM_FAIL", "xc_interface_open")
    monkeypatch.setenv("XCSHIM_ERRNO", "13")
    with pytest.raises(HypervisorError) as ei:
        LibXenCtrl(shim)
    assert ei.value.errno == "EACCES"


def test_libxenctrl_absent(tmp_path):
    with pytest.raises(HypervisorError) as ei:
        LibXenCtrl(str(tmp_path / "libxenctrl.so.4.17"))
    assert ei.value.errno == "ENOENT"
    assert "libxenctrl" in ei.value.msg

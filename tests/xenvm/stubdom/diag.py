"""Stub-domain diagnosis (build_stubdom.py --diag; /init runs it when the
command line has stubdom.diag=1): the device-model calls QEMU makes first,
made one by one with their errno, since QEMU only reports their fallout."""
import ctypes
import os
import sys

target = int(sys.argv[1])
print("diag: /dev/xen:", sorted(os.listdir("/dev/xen")), flush=True)
dm = ctypes.CDLL("libxendevicemodel.so.1", use_errno=True)
dm.xendevicemodel_open.restype = ctypes.c_void_p
h = dm.xendevicemodel_open(None, 0)
print("diag: xendevicemodel_open ->", h, "errno", ctypes.get_errno(), flush=True)
for handling in (1, 0):
    sid = ctypes.c_uint16(0xffff)
    ctypes.set_errno(0)
    rc = dm.xendevicemodel_create_ioreq_server(ctypes.c_void_p(h), ctypes.c_uint16(target), ctypes.c_int(handling),
                                               ctypes.byref(sid))
    err = ctypes.get_errno()
    print("diag: create_ioreq_server(domain %d, bufioreq %d) -> rc %d errno %d (%s) id %d" % (
        target, handling, rc, err, os.strerror(err), sid.value), flush=True)
    if rc == 0:
        dm.xendevicemodel_destroy_ioreq_server(ctypes.c_void_p(h), ctypes.c_uint16(target), sid)
xc = ctypes.CDLL("libxenctrl.so.4.17", use_errno=True)
xc.xc_interface_open.restype = ctypes.c_void_p
x = xc.xc_interface_open(None, None, 0)
val = ctypes.c_uint64(0)
ctypes.set_errno(0)
rc = xc.xc_hvm_param_get(ctypes.c_void_p(x), ctypes.c_uint32(target), ctypes.c_uint32(5), ctypes.byref(val))
print("diag: xc_hvm_param_get(IOREQ_PFN) -> rc %d errno %d value %#x" % (rc, ctypes.get_errno(), val.value), flush=True)

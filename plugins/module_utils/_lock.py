# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""flock-based locks shared with libxl, acquired within a deadline.

libxl serialises changes to a domain with an flock on
``/var/lib/xen/userdata-l.<domid>.<uuid>.domain-userdata-lock`` and QMP
sessions with ``...qmp-socket-lock``. Taking the same files makes our
requests and ``xl`` commands take turns instead of interleaving.
flock has no timeout, so a non-blocking attempt is retried with a short,
growing pause until the deadline: a lock is not a xenstore node, there is no
event to wait on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from ansible_collections.xen.pci.plugins.module_utils._errors import DeadlineExceeded, XenPciError


class FileLock:
    def __init__(self, path):
        self.path = path
        self.fd = None

    def acquire(self, deadline, holder_hint="another toolstack process"):
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)
        pause = 0.005
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise XenPciError("cannot lock %s: %s" % (self.path, os.strerror(exc.errno)), path=self.path) from None
                if deadline.expired:
                    raise DeadlineExceeded("lock %s still held by %s after %.1f s" % (self.path, holder_hint, deadline.elapsed()),
                                           path=self.path, waited=round(deadline.elapsed(), 3)) from None
                time.sleep(min(pause, deadline.remaining()))
                pause = min(pause * 2, 0.1)
                continue
            # libxl deletes lock files; make sure we hold the file that is
            # still at the path, not an unlinked one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def release(self):
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def domain_lock_path(userdata_dir, domid, uuid):
    """libxl's per-domain userdata lock (or ours when the uuid is unknown)."""
    if uuid:
        return os.path.join(userdata_dir, "userdata-l.%d.%s.domain-userdata-lock" % (domid, uuid))
    return os.path.join(userdata_dir, "xen.pci-domain-%d.lock" % domid)

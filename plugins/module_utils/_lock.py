# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""flock-based locks shared with libxl, acquired within a deadline.

libxl serialises changes to a domain with an flock on
``/var/lib/xen/userdata-l.<domid>.<uuid>.domain-userdata-lock`` and QMP
sessions with ``...qmp-socket-lock``. Taking the same files makes our
requests and ``xl`` commands take turns instead of interleaving.
flock has no timeout, so a non-blocking attempt is retried with a short,
growing pause until the deadline: a lock is not a xenstore node, there is no
event to wait on. The QMP lock (_qmp.QmpLock) is this same lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from ansible_collections.xen.pci.plugins.module_utils._errors import DeadlineExceeded, XenPciError


class FileLock:
    """An flock on ``path`` as libxl takes it (libxl__lock_file): the inode
    locked must still be the one at the path, and release unlinks the file
    before unlocking, so a waiter never holds a lock on a dead file."""

    def __init__(self, path, error_cls=XenPciError):
        self.path = path
        self.error_cls = error_cls
        self._fd = None

    @property
    def held(self):
        return self._fd is not None

    def _error(self, doing, exc):
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return self.error_cls("cannot %s %s: %s" % (doing, self.path, exc.strerror), lock=self.path, errno=name)

    def acquire(self, deadline, holder_hint="another toolstack process"):
        directory = os.path.dirname(self.path)
        try:
            if directory and not os.path.isdir(directory):
                os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise self._error("create the directory of", exc) from None
        pause = 0.005
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise self._error("open the lock file", exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                    raise self._error("lock", exc) from None
                if deadline.expired:
                    raise DeadlineExceeded("lock %s still held by %s after %.1f s" % (self.path, holder_hint, deadline.elapsed()),
                                           lock=self.path, waited=round(deadline.elapsed(), 3)) from None
                time.sleep(min(pause, deadline.remaining()))
                pause = min(pause * 2, 0.1)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)

    def release(self):
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def domain_lock_path(userdata_dir, domid, uuid):
    """libxl's per-domain userdata lock (or ours when the uuid is unknown)."""
    if uuid:
        return os.path.join(userdata_dir, "userdata-l.%d.%s.domain-userdata-lock" % (domid, uuid))
    return os.path.join(userdata_dir, "xen.pci-domain-%d.lock" % domid)

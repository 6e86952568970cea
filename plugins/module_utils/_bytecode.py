# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keep the compiled code of the collection's module_utils on the managed host.

Ansible ships a module with its module_utils to the host as Python source
in a zip, for every task, and Python keeps no bytecode for what it imports
from a zip: each task compiled about 240 KB of our source afresh, some 45 ms
of CPU per host and task (three quarters of what importing our code costs),
multiplied by the hosts of a fleet. ``install()`` keeps each compiled file
under ``~/.cache/xen-pci/bytecode/<Python cache tag>/`` of the effective
user, in Python's own hash-checked .pyc format (PEP 552): a file is used only
while the hash of the shipped source matches, so a new collection version
recompiles and nothing but the shipped source is ever run.

Trust: these modules run as root. A cached file is used only when its
directory chain from the cache root down belongs to the effective user and
nobody else may write it, checked on open descriptors (no race between the
check and the read). Anything else (no home, a read-only or full disk, a
foreign owner, a damaged file) falls back to compiling, as Python would: the
cache saves time and is never needed. ``XEN_PCI_BYTECODE_CACHE=off`` in the
task's ``environment`` turns it off; an absolute path puts it there instead.

Only imports from a zip go through it: from a checkout or an installed
collection, Python's ``__pycache__`` does the same already.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import stat
import sys
import zipimport

try:
    import _imp
except ImportError:  # not CPython: no way to give cached code its file name
    _imp = None

PACKAGE = "ansible_collections.xen.pci.plugins.module_utils."
ENV = "XEN_PCI_BYTECODE_CACHE"
_FLAGS = b"\x03\x00\x00\x00"   # PEP 552: hash-based, checked against the source


def install():
    """Put the cache in front of the import system, once per interpreter."""
    if any(isinstance(f, _CacheFinder) for f in sys.meta_path):
        return
    # Even without a cache (off, or no place for it) each module is then
    # compiled once instead of twice.
    sys.meta_path.insert(0, _CacheFinder(cache_root() if _imp is not None else None))


def cache_root():
    """Where the cache lives, as (a directory that exists, the levels below
    it that must be ours), or None when it is off or has no place."""
    asked = os.environ.get(ENV, "")
    if asked.lower() in ("off", "0", "false", "no"):
        return None
    tag = sys.implementation.cache_tag
    if not tag:
        return None
    if asked:
        if not os.path.isabs(asked):
            return None
        parent, leaf = os.path.split(os.path.normpath(asked))
        return (parent, [leaf, tag]) if leaf else None
    try:
        import pwd  # pylint: disable=import-outside-toplevel
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except (ImportError, KeyError):
        return None
    # The effective user's own home, not $HOME: under become, $HOME may still
    # be the login user's.
    if not home or home == "/":
        return None
    return home, [".cache", "xen-pci", "bytecode", tag]


class _CacheFinder:
    """Finds our module_utils in the zip they were shipped in and gives them
    a loader that caches their code; anything else is left to the rest of
    the import system.

    It reads the zip itself rather than asking zipimport for a spec: that
    compiles the module once only to learn its file name (and once more to
    load it), which is the cost this is here to save."""

    def __init__(self, root):
        self.root = root
        self._fd = None     # the cache directory, opened and checked once

    def directory(self, create):
        """A descriptor of the cache directory (opened and checked at the
        first use, then kept for the process), or None."""
        if self._fd is None and self.root is not None:
            self._fd = _open_dir(self.root, create)
        return self._fd

    def find_spec(self, fullname, path=None, target=None):  # pylint: disable=unused-argument
        if not fullname.startswith(PACKAGE) or not path:
            return None
        tail = fullname.rpartition(".")[2]
        for entry in path:
            importer = sys.path_importer_cache.get(entry)
            if not isinstance(importer, zipimport.zipimporter):
                continue
            filename = "%s%s%s%s.py" % (importer.archive, os.sep, importer.prefix, tail)
            try:
                if importer.is_package(fullname):
                    return None
                source = importer.get_data(filename)
            except (OSError, ImportError):
                continue
            loader = _CachingLoader(importer, filename, source, self)
            return importlib.util.spec_from_file_location(fullname, filename, loader=loader)
        return None

    def invalidate_caches(self):
        """Nothing of ours to forget (the import system asks every finder)."""


class _CachingLoader:
    """Loads one module from its zip, the code from the cache when it was
    compiled from the same source."""

    def __init__(self, importer, filename, source, finder):
        self._importer = importer
        self._filename = filename
        self._source = source
        self._finder = finder

    def __getattr__(self, name):
        # get_source (for tracebacks), get_data, ...: the zip's.
        return getattr(self._importer, name)

    def get_filename(self, fullname):  # pylint: disable=unused-argument
        return self._filename

    def is_package(self, fullname):  # pylint: disable=unused-argument
        return False

    def create_module(self, spec):  # pylint: disable=unused-argument
        return None

    def exec_module(self, module):
        exec(self.get_code(module.__name__), module.__dict__)  # pylint: disable=exec-used

    def get_code(self, fullname):
        key = importlib.util.source_hash(self._source)
        # As __pycache__ does: code compiled under -O is kept apart.
        level = sys.flags.optimize
        name = fullname + (".opt-%d.pyc" % level if level else ".pyc")
        code = _read(self._finder.directory(create=False), name, key)
        if code is not None:
            # Compiled under another run's temporary zip path: tracebacks
            # name this one.
            _imp._fix_co_filename(code, self._filename)  # pylint: disable=protected-access
            return code
        code = compile(self._source, self._filename, "exec", dont_inherit=True)
        _write(self._finder.directory(create=True), name, key, code)
        return code


def _private(info):
    """Ours alone: owned by the effective user, writable by nobody else."""
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _open_dir(root, create):
    """A descriptor of the cache directory, or None when it cannot be trusted.
    Each level below the anchor is opened from the one above it, never
    through a link, and must be ours (``_private``): a level swapped by
    somebody else between two runs fails the check instead of being read."""
    if not hasattr(os, "O_DIRECTORY") or os.open not in os.supports_dir_fd:
        return None
    anchor, parts = root
    flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)
    fd = None
    try:
        # The anchor (the home) may be a link; nothing in it is trusted.
        fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY)
        for part in parts:
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if not _private(os.fstat(fd)):
                raise PermissionError(part)
        return fd
    except OSError:
        if fd is not None:
            os.close(fd)
        return None


def _read(fd, name, key):
    """The cached code of ``name`` in the directory ``fd`` if it was compiled
    from the source whose hash is ``key``, else None."""
    if fd is None:
        return None
    try:
        file_fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=fd)
    except OSError:
        return None
    try:
        if not _private(os.fstat(file_fd)):
            return None
        with os.fdopen(file_fd, "rb") as handle:
            file_fd = None
            data = handle.read()
        if data[:4] != importlib.util.MAGIC_NUMBER or data[4:8] != _FLAGS or data[8:16] != key:
            return None
        try:
            return marshal.loads(data[16:])
        except (EOFError, ValueError, TypeError):
            return None
    except OSError:
        return None
    finally:
        if file_fd is not None:
            os.close(file_fd)


def _write(fd, name, key, code):
    """Replace the cached file whole (a reader sees the old or the new one);
    a failure leaves the cache as it was."""
    if fd is None:
        return
    data = importlib.util.MAGIC_NUMBER + _FLAGS + key + marshal.dumps(code)
    temp = "%s.%d.tmp" % (name, os.getpid())
    try:
        file_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600,
                          dir_fd=fd)
        with os.fdopen(file_fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except OSError:
        try:
            os.unlink(temp, dir_fd=fd)
        except OSError:
            pass

"""Shared fixtures of the xensim tests: ``xensim`` importable, and a
xenstored simulator served from a thread on short socket paths."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xensim.faults import Faults  # noqa: E402
from xensim.xenstore.server import run_in_thread  # noqa: E402
from xensim.xenstore.store import Store  # noqa: E402


@pytest.fixture
def sockdir():
    # AF_UNIX paths are limited to 107 bytes: pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="xs-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _serve(sockdir, flavour):
    faults = Faults()
    store = Store(faults=faults, flavour=flavour)
    name = "socket" if flavour == "oxenstored" else f"socket-{flavour}"
    return run_in_thread(store, os.path.join(sockdir, name), faults=faults,
                         extra={1: os.path.join(sockdir, f"{name}-dom1"), 2: os.path.join(sockdir, f"{name}-dom2")})


@pytest.fixture
def xenstored(sockdir):
    """A running simulated xenstored (answering as oxenstored): ``.path``
    (privileged socket), ``.paths_as[1]`` and ``[2]`` (sockets acting as
    guest domains 1 and 2), ``.store``, ``.faults``, ``.call(fn, ...)`` to
    touch the store on its loop thread."""
    handle = _serve(sockdir, "oxenstored")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def xenstored_c(sockdir):
    """The same, answering as C xenstored 4.17 (``Store(flavour="c")``)."""
    handle = _serve(sockdir, "c")
    try:
        yield handle
    finally:
        handle.stop()


def xs_tool(name, *args, path, timeout=5.0, check=False):
    """Run one of Debian's xenstore-* tools against ``path``; skip when absent."""
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} not installed (Debian package xenstore-utils)")
    env = dict(os.environ, XENSTORED_PATH=path)
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=timeout, check=check)

"""``python -m xensim serve`` as a subprocess, checked with Debian's xenstore-ls."""

import json
import os
import select
import signal
import subprocess
import sys

from conftest import xs_tool

XENSIM_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_line(proc, timeout):
    ready, _unused1, _unused = select.select([proc.stdout], [], [], timeout)
    assert ready, "xensim serve printed nothing within %s s" % timeout
    return proc.stdout.readline()


def test_serve_prints_paths_serves_and_stops_cleanly(sockdir):
    state = os.path.join(sockdir, "st")
    env = dict(os.environ, PYTHONPATH=XENSIM_DIR)
    proc = subprocess.Popen([sys.executable, "-m", "xensim", "serve", "--scenario", "pv-with-backend",
                             "--state-dir", state], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        paths = json.loads(_read_line(proc, 60))
        assert paths["xenstored"] == os.path.join(state, "run/xenstored/socket")
        assert set(paths["xenstored_as"]) == {"1"}
        assert os.path.exists(paths["xenstored"])
        res = xs_tool("xenstore-ls", "-fp", "/", path=paths["xenstored"], timeout=10)
        assert res.returncode == 0, res.stderr
        assert '/local/domain/0/backend/pci/1/0/state = "4"   (n0,r1)' in res.stdout
        assert '/local/domain/1/device/pci/0/state = "4"   (n1,r0)' in res.stdout
        # The guest's own socket acts as domain 1: it may read its frontend.
        res = xs_tool("xenstore-read", "/local/domain/1/device/pci/0/magic", path=paths["xenstored_as"]["1"])
        assert res.returncode == 0 and res.stdout.strip() == "7"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err
    assert not os.path.exists(paths["xenstored"])
    assert not os.path.exists(paths["xenstored_as"]["1"])
    if paths.get("sysfs_root"):
        assert not os.path.ismount(paths["sysfs_root"])


def test_scenarios_lists_shipped_ones():
    env = dict(os.environ, PYTHONPATH=XENSIM_DIR)
    res = subprocess.run([sys.executable, "-m", "xensim", "scenarios"], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    names = [line.split("\t")[0] for line in res.stdout.splitlines()]
    assert "pv-no-backend" in names and "demo" in names


def test_bad_scenario_exits_2(sockdir):
    env = dict(os.environ, PYTHONPATH=XENSIM_DIR)
    res = subprocess.run([sys.executable, "-m", "xensim", "serve", "--scenario", "/nonexistent.yaml",
                          "--state-dir", sockdir], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert res.returncode == 2 and "cannot read scenario" in res.stderr

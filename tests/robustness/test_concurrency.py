# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Eight module processes at once against one simulated host: the locks
match what is shared, so no request loses another's work, and libxl's
bookkeeping agrees with the backends after every race."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import bookkeeping_consistent, params_for, settle  # pylint: disable=import-error

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "request_driver.py")
PROCESSES = 8

DEVICES = "devices:\n" + "\n".join(
    '  - {bdf: "0000:00:%02x.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}' % (0x10 + i)
    for i in range(PROCESSES))
HOST = "name: concurrency\n" + DEVICES + """
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true}
  - {domid: 2, name: db, type: pv, state: running, pcifront: true}
"""


def bdf(i):
    return "0000:00:%02x.0" % (0x10 + i)


def race(host, requests, timeout=90.0):
    """Start every request at once, each in its own process; their outcomes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs = []
    for extra, desired in requests:
        spec = {"runner": "passthrough", "params": params_for(host, timeout=timeout, **extra), "desired": desired}
        procs.append(subprocess.Popen([sys.executable, DRIVER, json.dumps(spec)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout + 60)
        assert stdout.strip(), stderr[-2000:]
        out.append(json.loads(stdout.splitlines()[-1]))
    settle(host)
    return out


def devices_of(host, domid):
    base = "/local/domain/0/backend/pci/%d/0" % domid
    num = host.read(base + "/num_devs")
    return {host.read("%s/dev-%d" % (base, i)): host.read("%s/state-%d" % (base, i)) for i in range(int(num or 0))}


def crashes(results):
    return [r for r in results if not r["ok"] and r.get("error", {}).get("class") is None]


def test_eight_processes_attaching_to_one_domain_lose_nothing(sim):
    host = sim(HOST)
    results = race(host, [({"state": "present"}, {"web": [bdf(i)]}) for i in range(PROCESSES)])
    assert all(r["ok"] for r in results), [r.get("error") for r in results]
    assert devices_of(host, 1) == {bdf(i): "3" for i in range(PROCESSES)}
    assert bookkeeping_consistent(host) == []


def test_two_domains_racing_for_the_same_devices_share_them_without_losing_a_claim(sim):
    host = sim(HOST)
    wanted = [bdf(0), bdf(1), bdf(2)]
    results = race(host, [({"state": "present"}, {"web" if i % 2 else "db": wanted}) for i in range(PROCESSES)])
    assert not crashes(results), results
    # Every refusal names the device and the guest holding it.
    for r in results:
        if not r["ok"]:
            assert any(b in r["error"]["msg"] for b in wanted) and ("web" in r["error"]["msg"] or "db" in r["error"]["msg"])
    web, db = devices_of(host, 1), devices_of(host, 2)
    # A claim is all of a request's devices or none: one guest has all three.
    assert sorted([sorted(web), sorted(db)]) == [[], sorted(wanted)], (web, db)
    assert all(v == "3" for v in list(web.values()) + list(db.values()))
    assert any(r["ok"] for r in results)
    assert bookkeeping_consistent(host) == []


def test_mixed_attaches_and_detaches_end_as_the_last_of_each_device_asked(sim):
    host = sim(HOST)
    race(host, [({"state": "present"}, {"web": [bdf(i) for i in range(4)]})])
    requests = []
    for i in range(PROCESSES):
        device = bdf(i % 4)
        requests.append(({"state": "absent" if i < 4 else "present"}, {"web": [device]}))
    results = race(host, requests)
    assert all(r["ok"] for r in results), [r.get("error") for r in results]
    on_host = devices_of(host, 1)
    assert set(on_host) <= {bdf(i) for i in range(4)} and all(v == "3" for v in on_host.values())
    assert bookkeeping_consistent(host) == []
    # Each device's last word was one of the two requests about it: both
    # converge on rerun with no change.
    again = race(host, [({"state": "present"}, {"web": sorted(on_host)})])
    assert again[0]["ok"] and not again[0]["result"]["changed"]


def test_eight_exact_runs_with_different_sets_end_with_one_of_them(sim):
    host = sim(HOST)
    sets = [[bdf(i) for i in range(k, k + (k % 3) + 1)] for k in range(PROCESSES - 1)] + [[]]
    results = race(host, [({"state": "exact"}, {"web": s}) for s in sets])
    assert all(r["ok"] for r in results), [r.get("error") for r in results]
    final = sorted(devices_of(host, 1))
    assert final in [sorted(s) for s in sets], final
    assert bookkeeping_consistent(host) == []

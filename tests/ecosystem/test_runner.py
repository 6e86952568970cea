# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout as AWX runs it: ansible-runner, with the job streamed the way
AWX hands it to an execution node (``ansible-runner transmit | ansible-runner
worker | ansible-runner process``), against two simulated Xen hosts.

The job is laid out as AWX lays it out: a project whose playbook imports the
collection's ``xen.pci.rollout``, an inventory whose host variables carry
each host's declaration, the job's environment in env/envvars (the
collection installed from its artifact, as in an execution environment) and
a job timeout in env/settings. What is checked is what a job's page shows:
its status, the events of each host and the changed counts of the recap; a
second run changes nothing.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import yaml

from conftest import run_group  # pylint: disable=import-error

PLAN_PLAY = "Plan the rollout"
ROLLOUT_PLAY = "Roll out Xen PCI passthrough"
HOSTS = ("xen-a", "xen-b")
# What each host declares (inventory host variables), on tools/xensim/scenarios/demo.yaml.
DECLARED = {
    "xen-a": {
        "xen_pci_state": "exact",
        "xen_pci_make_assignable": True,
        "xen_pci_take_from_driver": ["0000:00:12.0"],
        "xen_pci_persist": True,
        "xen_pci_config_create": True,
        "xen_pci_config_backup": False,
        "xen_pci_assignments": {"alpine": ["00:13.0"], "builder": ["00:10.0"],
                                "sandbox": ["00:11.0,permissive=1", "00:12.0"]},
    },
    "xen-b": {
        "xen_pci_state": "present",
        "xen_pci_assignments": {"builder": ["00:10.0", "00:11.0"]},
    },
}


def _private_data_dir(root, hosts, collections_path):
    pdd = os.path.join(root, "job")
    for sub in ("project", "inventory", "env"):
        os.makedirs(os.path.join(pdd, sub))
    with open(os.path.join(pdd, "project", "rollout.yml"), "w", encoding="utf-8") as f:
        f.write("---\n- name: Roll out Xen PCI passthrough with xen.pci\n"
                "  ansible.builtin.import_playbook: xen.pci.rollout\n")
    inventory_hosts = {}
    for name, host in hosts.items():
        config_dir = os.path.join(host.dir, "etc", "xen")
        os.makedirs(config_dir)
        inventory_hosts[name] = dict(DECLARED[name], ansible_connection="local", ansible_python_interpreter=sys.executable,
                                     xen_pci_connection=host.connection, xen_pci_config_dir=config_dir)
    with open(os.path.join(pdd, "inventory", "hosts.yml"), "w", encoding="utf-8") as f:
        yaml.safe_dump({"xen_hosts": {"hosts": inventory_hosts}}, f)
    with open(os.path.join(pdd, "env", "envvars"), "w", encoding="utf-8") as f:
        yaml.safe_dump({"ANSIBLE_COLLECTIONS_PATH": collections_path, "ANSIBLE_NOCOLOR": "1",
                        "ANSIBLE_LOCALHOST_WARNING": "false"}, f)
    with open(os.path.join(pdd, "env", "settings"), "w", encoding="utf-8") as f:
        yaml.safe_dump({"job_timeout": 240}, f)
    return pdd


def _run_job(pdd, ident, work):
    """transmit | worker | process; returns the job's artifact directory."""
    cmd = ("set -o pipefail; ansible-runner transmit {pdd} -p rollout.yml --ident {ident}"
           " | ansible-runner worker --private-data-dir {work}"
           " | ansible-runner process {pdd} --ident {ident}").format(pdd=pdd, ident=ident, work=work)
    returncode, out, err = run_group(["bash", "-c", cmd], timeout=300)
    artifacts = os.path.join(pdd, "artifacts", ident)
    assert returncode == 0, "job %s: the pipeline exited %s\n%s\n%s" % (ident, returncode, out[-4000:], err[-4000:])
    assert os.path.isdir(artifacts), os.listdir(os.path.join(pdd, "artifacts"))
    return artifacts


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _events(artifacts):
    events = []
    for path in glob.glob(os.path.join(artifacts, "job_events", "*.json")):
        with open(path, encoding="utf-8") as f:
            events.append(json.load(f))
    return sorted(events, key=lambda e: e["counter"])


def _task_results(events, action, phase):
    """host -> the runner_on_ok results of the tasks running action in one
    phase of the role (the prefix of the task's name, e.g. "Hotplug")."""
    out = {}
    for e in events:
        data = e["event_data"]
        if e["event"] == "runner_on_ok" and data.get("resolved_action") == action and \
                data.get("task", "").startswith(phase + " |"):
            out.setdefault(data["host"], []).append(data["res"])
    return out


def _check_job(artifacts, first, collection):
    stdout = _read(os.path.join(artifacts, "stdout"))
    assert _read(os.path.join(artifacts, "status")).strip() == "successful", stdout[-4000:]
    assert _read(os.path.join(artifacts, "rc")).strip() == "0"
    events = _events(artifacts)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "playbook_on_start" and kinds[-1] == "playbook_on_stats", kinds
    assert not [e for e in events if e["event"] in ("runner_on_failed", "runner_on_unreachable")]

    # The plan play runs every host in one batch; the rollout play, serial
    # [1, '25%'], runs only the hosts whose plan has changes: on the first
    # run two batches of one host, each host's tasks all inside its own
    # batch, in inventory order; on the second none (the play matches no host).
    batches = {PLAN_PLAY: [], ROLLOUT_PLAY: []}
    ran = {PLAN_PLAY: set(), ROLLOUT_PLAY: set()}
    play = current = None
    for e in events:
        if e["event"] == "playbook_on_play_start":
            play = e["event_data"]["play"]
            current = set() if play in batches else None
            if current is not None:
                batches[play].append(current)
        elif current is not None and e["event"].startswith("runner_on_"):
            current.add(e["event_data"]["host"])
            if e["event"] not in ("runner_on_start", "runner_on_skipped"):
                ran[play].add(e["event_data"]["host"])
    assert batches == {PLAN_PLAY: [set(HOSTS)], ROLLOUT_PLAY: [{"xen-a"}, {"xen-b"}] if first else [set()]}, batches
    assert ran == {PLAN_PLAY: set(HOSTS), ROLLOUT_PLAY: set(HOSTS) if first else set()}, ran

    # Every host ran the role's tasks, from the collection installed from its artifact.
    role_tasks = [e for e in events if e["event"] == "runner_on_ok" and e["event_data"].get("resolved_role") == "xen.pci.passthrough"]
    assert {e["event_data"]["host"] for e in role_tasks} == set(HOSTS)
    paths = {e["event_data"]["task_path"].rsplit(":", 1)[0] for e in role_tasks}
    assert paths and all(p.startswith(collection + "/") for p in paths), paths

    hotplug = _task_results(events, "xen.pci.passthrough", "Hotplug")
    plans = _task_results(events, "xen.pci.plan", "Plan")
    preflight = _task_results(events, "xen.pci.passthrough", "Preflight")
    stats = [e for e in events if e["event"] == "playbook_on_stats"][0]["event_data"]
    assert set(stats["ok"]) == set(HOSTS) and not stats["failures"] and not stats["dark"], stats
    changed = {h: stats["changed"].get(h, 0) for h in HOSTS}
    # One plan per host (one module call), and on the first run the rolled-out role's own preflight.
    assert {h: len(plans.get(h, [])) for h in HOSTS} == {h: 1 for h in HOSTS}, plans
    assert {h: len(preflight.get(h, [])) for h in HOSTS} == {h: 1 if first else 0 for h in HOSTS}
    if first:
        assert all(changed[h] > 0 for h in HOSTS), changed
        assert {h: [r["changed"] for r in hotplug[h]] for h in HOSTS} == {h: [True] for h in HOSTS}
        assert all(plans[h][0]["changes"] and plans[h][0]["actions"] for h in HOSTS)
        seen = {h: hotplug[h][0]["domains"] for h in HOSTS}
    else:
        # Nothing to do: the plan is empty, and neither the role nor the hotplug runs.
        assert changed == {h: 0 for h in HOSTS}, changed
        assert {h: (plans[h][0]["changes"], plans[h][0]["why"]) for h in HOSTS} == {h: (False, []) for h in HOSTS}
        assert hotplug == {}, hotplug
        seen = {h: plans[h][0]["domains"] for h in HOSTS}
    # What the hosts have: the declared devices, connected.
    a, b = seen["xen-a"], seen["xen-b"]
    assert sorted(d["bdf"] for d in a["sandbox"]["devices"]) == ["0000:00:11.0", "0000:00:12.0"]
    assert [d["bdf"] for d in a["builder"]["devices"]] == ["0000:00:10.0"]
    assert sorted(d["bdf"] for d in b["builder"]["devices"]) == ["0000:00:10.0", "0000:00:11.0"]

    # The job's output: the recap and the rollout's report, per host.
    word = "changed" if first else "unchanged"
    for host in HOSTS:
        assert "%s: %s, " % (host, word) in stdout, stdout[-3000:]
        recap = [line for line in stdout.splitlines() if line.startswith(host + " ") and " ok=" in line]
        assert len(recap) == 1 and ("changed=0 " in recap[0]) != first, recap


def test_rollout_through_ansible_runner(simulated_hosts, collections_path, tmp_path):
    hosts = {name: simulated_hosts("demo") for name in HOSTS}
    pdd = _private_data_dir(str(tmp_path), hosts, collections_path)
    collection = os.path.join(collections_path, "ansible_collections", "xen", "pci")
    _check_job(_run_job(pdd, "first", str(tmp_path / "worker-first")), True, collection)
    _check_job(_run_job(pdd, "second", str(tmp_path / "worker-second")), False, collection)
    # xen-a persists its guests' devices in their xl config files.
    config = _read(os.path.join(hosts["xen-a"].dir, "etc", "xen", "sandbox.cfg"))
    assert "0000:00:11.0,permissive=1" in config and "0000:00:12.0" in config

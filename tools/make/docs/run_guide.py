# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the getting-started guide against a simulated host (tools/make/docs.sh).

The guide (docs/docsite/rst/getting_started.rst) is followed as a reader
would: its files (the code blocks with a ``:caption:``) are written out, the
simulated host it names is started with the state directory it names
(replaced by a fresh one), and its playbooks are run in its order. What the
guide shows must be what happens:

* the paths of its inventory are those the simulator serves;
* the check-mode run passes and changes nothing on the host;
* the first run and the second one end with the recap lines the guide
  prints (the same ``ok`` and ``changed`` counts), the second changing
  nothing;
* the xl config file it writes holds the devices it declares;
* the take-back playbook passes and leaves the devices with no guest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
GUIDE = os.path.join(ROOT, "docs", "docsite", "rst", "getting_started.rst")
GUIDE_STATE_DIR = "/tmp/xen-pci-sim"
FILES = ("inventory.yml", "first-steps.yml", "take-back.yml")
RECAP = re.compile(r"^\s*\S+\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

failures = []


def fail(msg):
    failures.append(msg)
    print("guide check FAILED: %s" % msg)


def blocks(text):
    """{caption: content} of the guide's code blocks that carry a caption,
    and the text of its console blocks, in order."""
    files, consoles = {}, []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^\.\. code-block:: (\S+)\s*$", lines[i])
        if not match:
            i += 1
            continue
        language, caption = match.group(1), None
        i += 1
        while i < len(lines) and re.match(r"^   :\w+:", lines[i]):
            option = re.match(r"^   :caption: (.+)$", lines[i])
            if option:
                caption = option.group(1).strip()
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
            body.append(lines[i][3:])
            i += 1
        content = "\n".join(body).strip("\n") + "\n"
        if caption:
            files[caption] = content
        elif language == "console":
            consoles.append(content)
    return files, consoles


def start_simulator(state_dir, scenario, log):
    """The simulator's process and the paths it serves (its first line)."""
    out = open(log, "w+", encoding="utf-8")   # pylint: disable=consider-using-with
    err = open(log + ".err", "w+", encoding="utf-8")   # pylint: disable=consider-using-with
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools", "xensim"))
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-m", "xensim", "serve", "--scenario", scenario, "--state-dir", state_dir],
        stdout=out, stderr=err, env=env, cwd=ROOT)
    problem = "did not start within 30 s"
    for _attempt in range(300):
        out.seek(0)
        first = out.readline()
        if first.endswith("\n"):
            served = json.loads(first)
            if served.get("sysfs_root"):
                return proc, served
            problem = "serves no sysfs (FUSE)"
            break
        if proc.poll() is not None:
            problem = "exited %d" % proc.returncode
            break
        time.sleep(0.1)
    # Not left running: the caller has no process to stop.
    stop_simulator(proc, state_dir)
    err.seek(0)
    raise RuntimeError("the simulator %s: %s" % (problem, err.read()[-2000:]))


def stop_simulator(proc, state_dir):
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # A simulator that died hard leaves its FUSE mount: never delete through it.
    with open("/proc/mounts", encoding="utf-8") as handle:
        mounts = [line.split()[1] for line in handle if line.split()[1].startswith(state_dir + "/")]
    for mount in mounts:
        subprocess.run(["fusermount", "-u", "-z", mount], check=False)
    shutil.rmtree(state_dir, ignore_errors=True)


def playbook(work, name, *extra):
    cmd = ["ansible-playbook", "-i", os.path.join(work, "inventory.yml"), os.path.join(work, name)] + list(extra)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=work, timeout=300, check=False)
    output = proc.stdout.decode("utf-8", "replace")
    recap = RECAP.findall(output)
    label = " ".join([name] + list(extra))
    if proc.returncode != 0 or not recap:
        fail("ansible-playbook %s exited %d:\n%s" % (label, proc.returncode, output[-3000:]))
        return None
    ok, changed, _unreachable, _failed = (int(n) for n in recap[-1])
    print("docs: the guide's %s: ok=%d changed=%d" % (label, ok, changed))
    return ok, changed


def shown_recaps(consoles):
    """The recap lines the guide prints, in order: [(ok, changed)]."""
    out = []
    for text in consoles:
        out += [(int(m[0]), int(m[1])) for m in RECAP.findall(text)]
    return out


def run(work, state_dir):
    with open(GUIDE, encoding="utf-8") as handle:
        text = handle.read()
    files, consoles = blocks(text)
    for name in FILES:
        if name not in files:
            fail("the guide has no %s block (captions: %s)" % (name, sorted(files)))
    if failures:
        return
    match = re.search(r"xensim serve --scenario (\S+) --state-dir %s\b" % re.escape(GUIDE_STATE_DIR), text)
    if not match:
        fail("the guide does not start the simulator with --state-dir %s" % GUIDE_STATE_DIR)
        return
    for name in FILES:
        with open(os.path.join(work, name), "w", encoding="utf-8") as handle:
            handle.write(files[name].replace(GUIDE_STATE_DIR, state_dir))
    proc = None
    try:
        proc, served = start_simulator(state_dir, match.group(1), os.path.join(work, "xensim.log"))
        inventory = files["inventory.yml"].replace(GUIDE_STATE_DIR, state_dir)
        for key in ("xenstored", "sysfs_root", "userdata_dir", "qmp_dir", "hypervisor"):
            if served[key] not in inventory:
                fail("the guide's inventory.yml does not name the simulator's %s (%s)" % (key, served[key]))
        check = playbook(work, "first-steps.yml", "--check", "--diff")
        if check is not None and os.path.exists(os.path.join(state_dir, "builder.cfg")):
            fail("the check-mode run wrote builder.cfg")
        runs = [playbook(work, "first-steps.yml"), playbook(work, "first-steps.yml")]
        shown = shown_recaps(consoles)
        if None not in runs:
            if runs[1][1] != 0:
                fail("the second run of first-steps.yml changed %d task(s)" % runs[1][1])
            if shown[:2] != runs:
                fail("the guide shows the recaps %s, the runs ended with %s (ok, changed)" % (shown[:2], runs))
        config = os.path.join(state_dir, "builder.cfg")
        if not os.path.exists(config):
            fail("first-steps.yml did not write builder.cfg")
        else:
            with open(config, encoding="utf-8") as handle:
                written = handle.read()
            if "0000:00:10.0" not in written or "0000:00:11.0,permissive=1" not in written:
                fail("builder.cfg does not hold the declared devices: %r" % written)
        back = playbook(work, "take-back.yml")
        if back is not None and back[1] == 0:
            fail("take-back.yml changed nothing")
    finally:
        stop_simulator(proc, state_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="xen-pci-guide-")
    # Short: AF_UNIX socket paths under it are limited to 107 bytes.
    state_dir = tempfile.mkdtemp(prefix="xpg-", dir="/tmp")
    try:
        run(work, state_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("docs: the getting-started guide: %d check(s) failed" % len(failures))
        return 1
    print("docs: the getting-started guide runs as written")
    return 0


if __name__ == "__main__":
    sys.exit(main())

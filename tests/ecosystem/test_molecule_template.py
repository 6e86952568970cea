# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The simulator as users get it: tools/xensim built into a wheel (offline,
with the venv's setuptools), installed into a fresh venv, and the molecule
scenario template (extensions/molecule/user-template) run unchanged against
it, converging the example role of docs/molecule-template.md, taken from
that page. molecule runs from the project venv with the fresh venv's
``xensim`` on PATH and xen.pci installed from its artifact; nothing reaches
the source tree through PYTHONPATH.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import zipfile

import pytest

from conftest import (ROOT, XENSIM_SRC, clean_env, force_clean, mounts_under,  # pylint: disable=import-error
                      processes_mentioning, run, run_group, short_tmpdir)

TEMPLATE = os.path.join(ROOT, "extensions", "molecule", "user-template")
GUIDE = os.path.join(ROOT, "docs", "molecule-template.md")


def _guide_files(prefix):
    """The fenced YAML blocks of the guide whose first line is ``# <path>`` under prefix: path -> text."""
    with open(GUIDE, encoding="utf-8") as f:
        text = f.read()
    files = {}
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        first, _sep, rest = block.partition("\n")
        match = re.match(r"# (\S+)$", first)
        if match and match.group(1).startswith(prefix):
            files[match.group(1)] = rest
    return files


@pytest.fixture(scope="module")
def xensim_venv(tmp_path_factory):
    """A fresh venv with xensim installed from a wheel built from tools/xensim."""
    base = tmp_path_factory.mktemp("xensim-package")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    src = str(base / "src")
    shutil.copytree(XENSIM_SRC, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "tests"))
    wheels = str(base / "wheels")
    run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
         "--wheel-dir", wheels, src], timeout=180)
    (wheel,) = os.listdir(wheels)
    assert re.match(r"xensim-[0-9.]+-py3-none-any\.whl$", wheel), wheel
    with zipfile.ZipFile(os.path.join(wheels, wheel)) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    shipped = sorted(os.listdir(os.path.join(XENSIM_SRC, "scenarios")))
    assert {"xensim/scenarios/" + s for s in shipped} <= names
    assert {"xensim/cli.py", "xensim/host.py", "xensim/xenstore/server.py", "xensim/kernel/pciback.py"} <= names
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    assert re.search(r"^\[console_scripts\]\nxensim = xensim\.cli:main$", entry_points, flags=re.M), entry_points

    venv = str(base / "venv")
    run([sys.executable, "-m", "venv", venv], timeout=120)
    run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--disable-pip-version-check",
         "-c", os.path.join(ROOT, "requirements", "constraints.txt"), os.path.join(wheels, wheel)], timeout=300)
    return venv


def test_installed_package_serves_its_shipped_scenarios(xensim_venv, tmp_path):
    xensim = os.path.join(xensim_venv, "bin", "xensim")
    res = run([xensim, "scenarios"], timeout=60, cwd=str(tmp_path))
    names = [line.split("\t")[0] for line in res.stdout.splitlines()]
    shipped = [f[:-5] for f in os.listdir(os.path.join(XENSIM_SRC, "scenarios")) if f.endswith(".yaml")]
    assert sorted(names) == sorted(shipped) and "demo" in names, res.stdout
    # The package and its scenarios come from the venv, not from the source tree.
    res = run([os.path.join(xensim_venv, "bin", "python"), "-c",
               "import xensim.scenario as s; print(s.__file__); print(s.SCENARIO_DIR)"], timeout=60, cwd=str(tmp_path))
    module, scenarios = res.stdout.split()
    site = os.path.join(xensim_venv, "lib")
    assert module.startswith(site) and scenarios.startswith(site), res.stdout
    assert os.path.isfile(os.path.join(scenarios, "demo.yaml"))


class _Molecule:
    """molecule in a user's role directory, the fresh venv's xensim on PATH."""

    def __init__(self, role_dir, bindir, collections_path):
        self.role_dir = role_dir
        # Short: the simulator's state directory (tempfile in create.yml) holds its sockets.
        self.tmp = short_tmpdir("xm-")
        self.ephemeral = os.path.join(self.tmp, "ephemeral")
        self.env = clean_env(PATH=bindir + os.pathsep + os.environ["PATH"], TMPDIR=self.tmp,
                             ANSIBLE_COLLECTIONS_PATH=collections_path, MOLECULE_EPHEMERAL_DIRECTORY=self.ephemeral,
                             ANSIBLE_HOME=os.path.join(self.tmp, "ansible-home"))

    def __call__(self, *args, timeout=360):
        returncode, out, err = run_group(["molecule"] + list(args), timeout, cwd=self.role_dir, env=self.env)
        return returncode, out + err

    def simulators(self):
        """Simulators this molecule started that still run or left a mount."""
        return processes_mentioning(self.tmp + "/xensim-"), mounts_under(self.tmp)

    def close(self):
        """After a test that stopped half-way: `molecule destroy`, as a user
        would, then whatever it could not stop is forced and returned."""
        if self.simulators() != ([], []):
            self("destroy", timeout=120)
        left = force_clean(self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return left


@pytest.fixture
def molecule(xensim_venv, collections_path, tmp_path):
    """The example role of the guide with the template as its default scenario."""
    role_dir = str(tmp_path / "roles" / "gpu_guests")
    files = _guide_files("roles/gpu_guests/")
    assert {"roles/gpu_guests/tasks/main.yml", "roles/gpu_guests/defaults/main.yml"} <= set(files), sorted(files)
    for path, text in files.items():
        dest = os.path.join(str(tmp_path), path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w", encoding="utf-8") as f:
            f.write(text)
    shutil.copytree(TEMPLATE, os.path.join(role_dir, "molecule", "default"))
    bindir = str(tmp_path / "bin")
    os.makedirs(bindir)
    os.symlink(os.path.join(xensim_venv, "bin", "xensim"), os.path.join(bindir, "xensim"))
    mol = _Molecule(role_dir, bindir, collections_path)
    yield mol
    left = mol.close()
    assert not left, "molecule left simulators behind: %s" % left


def _recaps(out):
    """The PLAY RECAP lines of xen-sim, in order: {"ok": n, "changed": n, ...} each."""
    return [dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", line))
            for line in out.splitlines() if re.match(r"^xen-sim\s+: ok=", line)]


def test_template_converges_the_example_role(molecule):
    rc, out = molecule("test")
    assert rc == 0, out[-8000:]
    # converge, idempotence, verify: three runs on xen-sim, the first one
    # changing things, the second (idempotence) nothing.
    recaps = _recaps(out)
    assert len(recaps) == 3, out[-8000:]
    assert recaps[0]["changed"] > 0 and recaps[1]["changed"] == 0, recaps
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in recaps), recaps
    assert "Check each expected guest has exactly its devices, connected" in out
    # The example role ran the collection's role (ANSIBLE_COLLECTIONS_PATH:
    # only the collection installed from its artifact).
    assert "TASK [xen.pci.passthrough : Hotplug | Bring the running guests' devices to the declared state]" in out
    # destroy stopped the simulator and forgot it.
    assert molecule.simulators() == ([], [])
    assert not os.path.exists(os.path.join(molecule.ephemeral, "xensim"))


def test_template_verify_fails_on_a_host_that_differs_and_destroy_still_cleans(molecule):
    """verify before converge: ci has none of its GPU functions yet, so the
    check must fail and name the guest; destroy then stops the simulator."""
    rc, out = molecule("create")
    assert rc == 0, out[-8000:]
    procs, _mounts = molecule.simulators()
    assert procs, "create started no simulator"
    rc, out = molecule("verify")
    assert rc != 0, out[-8000:]
    assert "ci: expected ['0000:00:11.0', '0000:00:11.1'] connected, the host shows []" in out, out[-8000:]
    rc, out = molecule("destroy")
    assert rc == 0, out[-8000:]
    assert molecule.simulators() == ([], [])

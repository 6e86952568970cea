# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An execution environment (EE) with xen.pci, as far as it is built without
a container engine: the definition (meta/ee/execution-environment.yml), the
build context `ansible-builder create` writes from it, the collection
artifact inside it, and what the image build would install from it. The
commands the Containerfile runs for the collection (the galaxy stage's
install, the builder stage's introspection) are run here on the same files.
"""

from __future__ import annotations

import filecmp
import os
import re
import sys
import tarfile

import yaml
from bindep.depends import Depends  # pylint: disable=import-error
from packaging.requirements import Requirement

from conftest import ROOT, clean_env, run  # pylint: disable=import-error

DEFINITION = os.path.join(ROOT, "meta", "ee", "execution-environment.yml")


def _pins():
    """The exact releases of requirements/controller.txt: name -> version."""
    pins = {}
    with open(os.path.join(ROOT, "requirements", "controller.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[name.lower()] = version
    return pins


def _galaxy_version():
    with open(os.path.join(ROOT, "galaxy.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)["version"]


def _lines(path):
    """The requirement lines of a pip or bindep file, comments dropped."""
    with open(path, encoding="utf-8") as f:
        return [line.split("#", 1)[0].strip() for line in f if line.split("#", 1)[0].strip()]


def _stages(containerfile):
    """Containerfile -> {stage name: [its lines]} (ARG lines before the first FROM dropped)."""
    stages, current = {}, None
    with open(containerfile, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            match = re.match(r"FROM (\S+) AS (\w+)$", line)
            if match:
                current = match.group(2)
                stages[current] = [line]
            elif current and line:
                stages[current].append(line)
    return stages


def test_definition_installs_this_version_with_the_tested_releases():
    with open(DEFINITION, encoding="utf-8") as f:
        definition = yaml.safe_load(f)
    pins = _pins()
    deps = definition["dependencies"]
    assert definition["version"] == 3
    assert deps["ansible_core"]["package_pip"] == "ansible-core==" + pins["ansible-core"]
    assert deps["ansible_runner"]["package_pip"] == "ansible-runner==" + pins["ansible-runner"]
    # ansible-core 2.21 runs on Python 3.12+ only.
    assert re.search(r"python3\.(1[2-9])$", deps["python_interpreter"]["python_path"])
    assert deps["galaxy"] == {"collections": [{"name": "collections/xen-pci-%s.tar.gz" % _galaxy_version(),
                                               "type": "file"}]}
    # The collection's own needs come from its meta/execution-environment.yml
    # when the image is built, not from a copy of them here.
    assert "python" not in deps and "system" not in deps


def test_artifact_carries_the_ee_metadata_and_no_development_files(ee_build):
    with tarfile.open(ee_build["artifact"]) as tar:
        names = set(tar.getnames())
    for shipped in ("meta/execution-environment.yml", "meta/ee-requirements.txt", "meta/ee-bindep.txt",
                    "meta/runtime.yml", "roles/passthrough/tasks/main.yml", "playbooks/rollout.yml",
                    "plugins/modules/passthrough.py", "MANIFEST.json", "FILES.json"):
        assert shipped in names, shipped
    for dev in ("tools", "tests", "requirements", "Makefile", "build", "benchmarks", ".ci", "docs/xensim.md"):
        assert not [n for n in names if n == dev or n.startswith(dev + "/")], dev


def test_build_context(ee_build):
    context = ee_build["context"]
    build = os.path.join(context, "_build")
    # The artifact, byte for byte, where the galaxy requirement names it.
    with open(os.path.join(build, "requirements.yml"), encoding="utf-8") as f:
        galaxy = yaml.safe_load(f)
    assert galaxy == {"collections": [{"name": "collections/" + os.path.basename(ee_build["artifact"]), "type": "file"}]}
    assert filecmp.cmp(os.path.join(build, "collections", os.path.basename(ee_build["artifact"])), ee_build["artifact"],
                       shallow=False)
    assert not os.path.exists(os.path.join(build, "requirements.txt"))
    for script in ("assemble", "install-from-bindep", "introspect.py", "check_galaxy", "check_ansible", "entrypoint"):
        assert os.path.isfile(os.path.join(build, "scripts", script)), script

    containerfile = os.path.join(context, "Containerfile")
    with open(containerfile, encoding="utf-8") as f:
        text = f.read()
    pins = _pins()
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core==%s ansible-runner==%s"' % (
        pins["ansible-core"], pins["ansible-runner"]) in text
    assert 'ARG PYCMD="/usr/bin/python3.12"' in text
    stages = _stages(containerfile)
    assert list(stages) == ["base", "galaxy", "builder", "final"]
    galaxy_stage = stages["galaxy"]
    assert "COPY _build /build" in galaxy_stage and "WORKDIR /build" in galaxy_stage
    installs = [line for line in galaxy_stage if "ansible-galaxy collection install" in line]
    assert len(installs) == 1 and "-r requirements.yml" in installs[0], galaxy_stage
    assert '--collections-path "/usr/share/ansible/collections"' in installs[0]
    builder = stages["builder"]
    assert "COPY --from=galaxy /usr/share/ansible /usr/share/ansible" in builder
    assert [line for line in builder if "introspect.py introspect" in line], builder
    assert "RUN /output/scripts/assemble" in builder
    final = stages["final"]
    assert "COPY --from=galaxy /usr/share/ansible /usr/share/ansible" in final
    assert "RUN /output/scripts/check_ansible $PYCMD" in final


def test_image_build_steps_install_the_collection_and_find_its_needs(ee_build, tmp_path):
    """The galaxy stage's install (in _build, its WORKDIR) and the builder
    stage's introspection, run on the context's own files."""
    build = os.path.join(ee_build["context"], "_build")
    installed = str(tmp_path / "collections")
    run(["ansible-galaxy", "collection", "install", "--offline", "-r", "requirements.yml", "--collections-path",
         installed], timeout=120, cwd=build, env=clean_env(ANSIBLE_GALAXY_DISABLE_GPG_VERIFY="1"))
    collection = os.path.join(installed, "ansible_collections", "xen", "pci")
    assert os.path.isfile(os.path.join(collection, "meta", "execution-environment.yml"))
    assert os.path.isfile(os.path.join(collection, "roles", "passthrough", "tasks", "main.yml"))

    pip_out, bindep_out = str(tmp_path / "requirements.txt"), str(tmp_path / "bindep.txt")
    run([sys.executable, os.path.join(build, "scripts", "introspect.py"), "introspect", installed,
         "--write-pip=" + pip_out, "--write-bindep=" + bindep_out], timeout=60)
    with open(pip_out, encoding="utf-8") as f:
        pip_lines = f.read().splitlines()
    with open(bindep_out, encoding="utf-8") as f:
        bindep_lines = f.read().splitlines()
    declared_pip = _lines(os.path.join(ROOT, "meta", "ee-requirements.txt"))
    declared_bindep = _lines(os.path.join(ROOT, "meta", "ee-bindep.txt"))
    assert pip_lines == ["%s  # from collection xen.pci" % line for line in declared_pip]
    assert bindep_lines == ["%s  # from collection xen.pci" % line for line in declared_bindep]

    # The EE's pyxs admits the release the tests run with.
    (pyxs,) = [Requirement(line) for line in declared_pip if Requirement(line).name == "pyxs"]
    assert pyxs.specifier.contains(_pins()["pyxs"]), (pyxs, _pins()["pyxs"])
    # bindep picks the ssh client's package of each platform family.
    deps = Depends("\n".join(bindep_lines) + "\n")
    assert [rule[0] for rule in deps.active_rules(["platform:rpm", "platform:redhat"])] == ["openssh-clients"]
    assert [rule[0] for rule in deps.active_rules(["platform:dpkg", "platform:debian"])] == ["openssh-client"]

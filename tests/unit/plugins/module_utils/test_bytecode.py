# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bytecode cache of module_utils imported from a zip (as Ansible ships
them): each case runs a fresh interpreter on a zip laid out as AnsiballZ
lays it out, and counts the compilations of the shipped module."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
BYTECODE = os.path.join(ROOT, "plugins", "module_utils", "_bytecode.py")
MU = "ansible_collections/xen/pci/plugins/module_utils/"
PACKAGE = "ansible_collections.xen.pci.plugins.module_utils"
PROBE = '''
VALUE = %r


def fail():
    raise ValueError("from the probe")
'''

CHILD = r'''
import builtins, json, sys, traceback
sys.path.insert(0, sys.argv[1])
compiled = []
real_compile = builtins.compile
def counting_compile(source, filename, *args, **kwargs):
    if str(filename).endswith("_probe.py"):
        compiled.append(filename)
    return real_compile(source, filename, *args, **kwargs)
builtins.compile = counting_compile
from ansible_collections.xen.pci.plugins.module_utils import _bytecode
_bytecode.install()
_bytecode.install()
from ansible_collections.xen.pci.plugins.module_utils import _probe
try:
    _probe.fail()
except ValueError:
    frame = traceback.extract_tb(sys.exc_info()[2])[-1]
print(json.dumps({"value": _probe.VALUE, "compiled": len(compiled), "file": _probe.__file__,
                  "loader": type(_probe.__loader__).__name__, "co_filename": _probe.fail.__code__.co_filename,
                  "tb_file": frame.filename, "tb_line": frame.line,
                  "finders": sum(type(f).__name__ == "_CacheFinder" for f in sys.meta_path)}))
'''


def _zip(path, value):
    with zipfile.ZipFile(path, "w") as z:
        for package in ("ansible_collections/", "ansible_collections/xen/", "ansible_collections/xen/pci/",
                        "ansible_collections/xen/pci/plugins/", MU):
            z.writestr(package + "__init__.py", "")
        with open(BYTECODE, encoding="utf-8") as handle:
            z.writestr(MU + "_bytecode.py", handle.read())
        z.writestr(MU + "_probe.py", PROBE % value)
    return str(path)


def _run(tmp_path, archive, cache, flags=()):
    env = dict(os.environ, XEN_PCI_BYTECODE_CACHE=cache)
    env.pop("PYTHONPATH", None)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = subprocess.run([sys.executable] + list(flags) + [str(script), archive], capture_output=True, text=True,
                         env=env, check=True, cwd=str(tmp_path))
    return json.loads(out.stdout)


def _cached(cache):
    tag = sys.implementation.cache_tag
    return os.path.join(cache, tag, "ansible_collections.xen.pci.plugins.module_utils._probe.pyc")


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def test_a_zipped_module_is_compiled_once_then_read_from_the_cache(tmp_path, cache):
    first = _run(tmp_path, _zip(tmp_path / "a.zip", "one"), cache)
    assert (first["value"], first["compiled"], first["loader"], first["finders"]) == ("one", 1, "_CachingLoader", 1)
    info = os.stat(_cached(cache))
    assert oct(info.st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.dirname(_cached(cache))).st_mode & 0o777) == "0o700"
    # Another run ships the same source in another temporary zip: nothing is
    # compiled, and the code names this run's file (tracebacks show its lines).
    second = _run(tmp_path, _zip(tmp_path / "b.zip", "one"), cache)
    assert (second["value"], second["compiled"]) == ("one", 0)
    assert second["file"] == second["co_filename"] == second["tb_file"] == str(tmp_path / "b.zip") + "/" + MU + "_probe.py"
    assert second["tb_line"] == 'raise ValueError("from the probe")'


def test_changed_source_is_compiled_again_and_replaces_the_cached_code(tmp_path, cache):
    _run(tmp_path, _zip(tmp_path / "a.zip", "one"), cache)
    changed = _run(tmp_path, _zip(tmp_path / "b.zip", "two"), cache)
    assert (changed["value"], changed["compiled"]) == ("two", 1)
    again = _run(tmp_path, _zip(tmp_path / "c.zip", "two"), cache)
    assert (again["value"], again["compiled"]) == ("two", 0)
    assert len(os.listdir(os.path.dirname(_cached(cache)))) == 1


def test_code_compiled_under_o_is_kept_apart(tmp_path, cache):
    _run(tmp_path, _zip(tmp_path / "a.zip", "one"), cache)
    assert _run(tmp_path, _zip(tmp_path / "b.zip", "one"), cache, flags=["-O"])["compiled"] == 1
    assert _run(tmp_path, _zip(tmp_path / "c.zip", "one"), cache, flags=["-O"])["compiled"] == 0
    assert _run(tmp_path, _zip(tmp_path / "d.zip", "one"), cache)["compiled"] == 0
    assert sorted(os.listdir(os.path.dirname(_cached(cache)))) == [
        "ansible_collections.xen.pci.plugins.module_utils._probe.opt-1.pyc",
        "ansible_collections.xen.pci.plugins.module_utils._probe.pyc"]


@pytest.mark.parametrize("damage", [b"", b"garbage", None], ids=["empty", "garbage", "truncated"])
def test_a_damaged_cache_file_is_compiled_over(tmp_path, cache, damage):
    _run(tmp_path, _zip(tmp_path / "a.zip", "one"), cache)
    path = _cached(cache)
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:len(data) // 2] if damage is None else damage)
    result = _run(tmp_path, _zip(tmp_path / "b.zip", "one"), cache)
    assert (result["value"], result["compiled"]) == ("one", 1)
    assert _run(tmp_path, _zip(tmp_path / "c.zip", "one"), cache)["compiled"] == 0


def test_a_cache_directory_others_may_write_is_neither_read_nor_written(tmp_path, cache):
    _run(tmp_path, _zip(tmp_path / "a.zip", "one"), cache)
    os.chmod(os.path.dirname(_cached(cache)), 0o777)
    os.chmod(cache, 0o777)
    before = os.stat(_cached(cache)).st_mtime_ns
    for name in ("b.zip", "c.zip"):
        result = _run(tmp_path, _zip(tmp_path / name, "two"), cache)
        assert (result["value"], result["compiled"]) == ("two", 1)
    assert os.stat(_cached(cache)).st_mtime_ns == before


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_cached_file_of_another_user_is_not_run(tmp_path, cache):
    _run(tmp_path, _zip(tmp_path / "a.zip", "one"), cache)
    os.chown(_cached(cache), 65534, 65534)
    result = _run(tmp_path, _zip(tmp_path / "b.zip", "one"), cache)
    assert (result["value"], result["compiled"]) == ("one", 1)


def test_a_link_in_the_cache_path_is_not_followed(tmp_path, cache):
    elsewhere = tmp_path / "elsewhere"
    _run(tmp_path, _zip(tmp_path / "a.zip", "one"), str(elsewhere))
    os.makedirs(cache, mode=0o700)
    os.symlink(str(elsewhere / sys.implementation.cache_tag), os.path.join(cache, sys.implementation.cache_tag))
    for name in ("b.zip", "c.zip"):
        assert _run(tmp_path, _zip(tmp_path / name, "one"), cache)["compiled"] == 1


@pytest.mark.parametrize("setting", ["off", "relative/dir"])
def test_off_or_a_relative_path_keeps_nothing_and_still_compiles_once(tmp_path, setting):
    for name in ("a.zip", "b.zip"):
        result = _run(tmp_path, _zip(tmp_path / name, "one"), setting)
        assert (result["value"], result["compiled"], result["loader"]) == ("one", 1, "_CachingLoader")
    assert sorted(os.listdir(tmp_path)) == ["a.zip", "b.zip", "child.py"]


def test_modules_imported_from_a_directory_are_left_to_python(tmp_path, cache):
    tree = tmp_path / "tree"
    with zipfile.ZipFile(_zip(tmp_path / "a.zip", "one")) as z:
        z.extractall(str(tree))
    result = _run(tmp_path, str(tree), cache)
    assert (result["value"], result["loader"]) == ("one", "SourceFileLoader")
    assert not os.path.exists(cache)


# What a module may import before it installs the cache: small files, each
# compiled on every run.
BEFORE_THE_CACHE = {"_bytecode", "_edge", "_host_options"}


def test_every_module_installs_the_cache_before_it_imports_its_runner():
    modules = os.path.join(ROOT, "plugins", "modules")
    checked = []
    for name in sorted(os.listdir(modules)):
        if not name.endswith(".py") or name == "__init__.py":
            continue
        with open(os.path.join(modules, name), encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        top = [_imported(node) for node in tree.body if isinstance(node, ast.ImportFrom)]
        assert set(filter(None, top)) <= BEFORE_THE_CACHE, (name, top)
        main = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"][0]
        order = []
        for node in main.body:
            if isinstance(node, ast.Expr) and ast.unparse(node) == "_bytecode.install()":
                order.append("install")
            elif isinstance(node, ast.ImportFrom) and _imported(node):
                order.append(_imported(node))
        assert order[0] == "install" and order[1].startswith("_runner_"), (name, order)
        checked.append(name)
    assert len(checked) == 5, checked


def test_what_a_module_imports_before_the_cache_imports_no_more_of_ours():
    """_host_options and _edge load the platform and the xenstore client
    lazily: imported at the top of a module, they would bring them in
    before the cache."""
    for name in BEFORE_THE_CACHE:
        with open(os.path.join(ROOT, "plugins", "module_utils", name + ".py"), encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        ours = {_imported(node) for node in tree.body if isinstance(node, ast.ImportFrom)} - {None}
        assert ours <= {"_errors", "_budget", "_deadline"}, (name, ours)


def _imported(node):
    """The module_utils file an import names, or None for anything else."""
    if not (node.module or "").startswith(PACKAGE):
        return None
    return node.names[0].name if node.module == PACKAGE else node.module[len(PACKAGE) + 1:]

#!/usr/bin/env bash
# Prepares what ansible-test needs offline:
# - $XEN_PCI_PYBIN/python3.X: links to the real interpreters (never pyenv
#   shims) of every Python ansible-test supports that this machine has, so
#   sanity checks module code on the target Pythons (3.9+), not just 3.12;
# - get_pip_<version>.py in ansible-test's cache: our offline bootstrap
#   (tools/make/get_pip.py) instead of the script it would download.
set -euo pipefail
pybin=$XEN_PCI_PYBIN
mkdir -p "$pybin"
for minor in 9 10 11 13 14; do
    real=
    # The newest patch release wins (version sort of the matching paths).
    while IFS= read -r candidate; do
        [[ -x $candidate ]] && real=$candidate
    done < <(printf '%s\n' /root/.pyenv/versions/3."$minor".*/bin/python3."$minor" | sort -V)
    if [[ -n $real ]]; then
        ln -sfn "$real" "$pybin/python3.$minor"
    else
        rm -f "$pybin/python3.$minor"
    fi
done
# 3.12 is the controller venv's interpreter, found first on PATH.

pip_version=$("$XEN_PCI_VENV/bin/python" - <<'PY'
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
print(get_venv_packages(NativePythonConfig(version='3.12', path='/'))['pip'])
PY
)
# ansible-test runs with this HOME (tools/make/ansible-test.sh says why).
cache=$XEN_PCI_CACHE/ansible-test-home/.ansible/test/cache
mkdir -p "$cache"
target=$cache/get_pip_${pip_version//./_}.py
src=$XEN_PCI_ROOT/tools/make/get_pip.py
# Replace a downloaded real get-pip.py too: ours works offline.
cmp -s "$src" "$target" || cp "$src" "$target"

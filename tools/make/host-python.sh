#!/usr/bin/env bash
# host-python.sh 3.X: prints the interpreter of a managed host's Python for
# the integration targets: a venv of pyenv's real Python 3.X (the link
# tools/make/pybin.sh made, never a pyenv shim) with requirements/host.txt,
# what Debian's python3-pyxs gives a dom0. The venv,
# $XEN_PCI_CACHE/host-py3.X-<hash of the requirements>, is made by
# tools/make/venv.sh once and reused.
set -euo pipefail
version=${1:?usage: host-python.sh 3.X}
root=$XEN_PCI_ROOT
real=$(readlink -f "$XEN_PCI_PYBIN/python$version" || true)
[[ -n $real && -x $real ]] || { echo "host-python: no Python $version from pyenv (make pybin links them)" >&2; exit 1; }
hash=$(cat "$root/requirements/host.txt" "$root/requirements/host.lock" | sha256sum | cut -c1-16)
venv=$XEN_PCI_CACHE/host-py$version-$hash
if [[ ! -f $venv/.xen-pci-requirements-$hash ]]; then
    XEN_PCI_VENV=$venv PYTHON_BASE=$real "$root/tools/make/venv.sh" \
        "$venv/.xen-pci-requirements-$hash" requirements/host.txt requirements/host.lock >&2
fi
echo "$venv/bin/python"

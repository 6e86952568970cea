#!/usr/bin/env bash
# venv.sh STAMP [DIRECT LOCKED]: creates the venv $XEN_PCI_VENV from the
# requirements file DIRECT (pinned direct dependencies) constrained by LOCKED
# (everything pinned, written by tools/make/lock.sh) with $PYTHON_BASE, then
# writes the stamp file STAMP. Default: the controller venv
# (requirements/controller.txt, requirements/constraints.txt). The callers
# (the Makefile, tools/make/matrix.sh) key both the venv's directory and the
# stamp's name on the requirements' hash and call this only when the stamp is
# missing.
set -euo pipefail
stamp=$1
direct=${2:-requirements/controller.txt}
locked=${3:-requirements/constraints.txt}
venv=${XEN_PCI_VENV:?}
python_base=${PYTHON_BASE:?}
[[ -x $python_base ]] || { echo "venv: no interpreter at PYTHON_BASE=$python_base; install it with pyenv or set PYTHON_BASE" >&2; exit 1; }
cd "${XEN_PCI_ROOT:-$(dirname "$0")/../..}"

# Two make runs on one machine (a CI clone and a work tree) share the venv:
# one builds it, the other waits and then finds the stamp.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock -w 1800 9 || { echo "venv: timed out waiting for $venv.lock" >&2; exit 1; }
if [[ -f $stamp ]]; then
    exit 0
fi

if [[ -e $venv && ! -f $venv/pyvenv.cfg ]]; then
    echo "venv: $venv exists and is not a venv; refusing to replace it" >&2
    exit 1
fi
echo "venv: creating $venv from $python_base ($direct)"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python_base" -m venv "$venv"
log=$venv/pip-install.log
# pip's output goes to a log (this machine's index configuration makes it
# noisy); it is shown only if the install fails.
if ! timeout 1800 "$venv/bin/python" -m pip install --disable-pip-version-check \
        -r "$direct" -c "$locked" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "venv: pip install failed (full log: $log)" >&2
    exit 1
fi
"$venv/bin/python" -m pip check --disable-pip-version-check
touch "$stamp"

#!/usr/bin/env bash
# The robustness layer (tests/robustness): the request engine under injected
# faults, kills at every step and concurrent requests, on simulated hosts.
# pytest with the collection (a link tree) and the simulator on PYTHONPATH.
set -euo pipefail
# shellcheck source=tools/make/tree.sh
source "$XEN_PCI_ROOT/tools/make/tree.sh"
root=$(link_tree)
export PYTHONPATH="${root%/ansible_collections/xen/pci}:$XEN_PCI_ROOT/tools/xensim${PYTHONPATH:+:$PYTHONPATH}"
# The cases mostly wait (for a timeout to expire, a hung fault, a killed
# request's rerun): serially the layer took 353-434 s, and all of its cases
# together use under 50 s of CPU.
# Each case has its own simulated host in its own directory, so they run in
# XEN_PCI_ROBUSTNESS_WORKERS pytest-xdist workers (4 by default, twice the
# cores here: about 100 s). 0 runs them in this process.
workers=${XEN_PCI_ROBUSTNESS_WORKERS:-4}
parallel=()
((workers > 0)) && parallel=(-n "$workers")
exec "$XEN_PCI_ROOT/tools/make/pytest-layer.sh" robustness tests/robustness "${parallel[@]}" -rs --durations=10 "$@"

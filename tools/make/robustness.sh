#!/usr/bin/env bash
# The robustness layer (tests/robustness): the request engine under injected
# faults, kills at every step and concurrent requests, on simulated hosts.
# pytest with the collection (a link tree) and the simulator on PYTHONPATH.
set -euo pipefail
# shellcheck source=tools/make/tree.sh
source "$XEN_PCI_ROOT/tools/make/tree.sh"
root=$(link_tree)
export PYTHONPATH="${root%/ansible_collections/xen/pci}:$XEN_PCI_ROOT/tools/xensim${PYTHONPATH:+:$PYTHONPATH}"
exec "$XEN_PCI_ROOT/tools/make/pytest-layer.sh" robustness tests/robustness -rs --durations=10 "$@"
